"""Class activation maps from a layer's activations and their gradients.

Every gradient CAM is a few lines over one shared step: the adapter captures the layer's
activations ``A`` (N, C, *S) and the gradients ``G`` (N, K, C, *S) of each target score with
respect to them, in one forward and one backward pass that stops at the layer. Several gradient
CAMs asked for together (and Eigen-CAM, which needs no gradient) share that pass
(:func:`salience.methods.base.attribute_shared`).

Maps are returned at the layer's resolution ``(N, K, *S)``; upsampling is for display
(:func:`salience.postprocess.upsample`). As in the papers, a ReLU keeps the positive evidence;
``relu=False`` keeps the negative evidence too.

Maps have the spatial rank of the layer's feature map: 2-D for images, 3-D for volumes
``(N, C, D, H, W)``, 1-D for signals ``(N, C, L)``. Token outputs ``(N, T, D)`` of a vision
transformer are seen as a grid ``(N, D, H, W)``: the prefix tokens (class token, register tokens)
are dropped and the grid is inferred as the largest square, or given as ``grid=(H, W)``. Whether
a 3-D output is tokens is decided from its shape and the input's
(:func:`salience.adapters.layers.reads_as_tokens`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from salience.adapters.base import (
    LayerAccessAdapter,
    LayerGradientAdapter,
    Need,
    Outputs,
    check_finite_output,
)
from salience.adapters.layers import LayerError, LayerLike, layer_name, reads_as_tokens
from salience.errors import InvalidInputError
from salience.methods.base import (
    Attribution,
    Explainer,
    SinglePassExplainer,
    attribute_shared,
    register_explainer,
)
from salience.methods.gradient import GuidedBackprop
from salience.methods.options import LAYER, Option
from salience.postprocess import upsample
from salience.targets import TargetSpec

RELU = Option("relu", bool, True, "CAMs: no ReLU, keep negative evidence", flag="keep-negative")
GRID = Option(
    "grid", object, None, "(H, W) of a transformer layer's patch tokens (inferred by default)"
)
TOKENS = Option(
    "tokens",
    bool,
    None,
    "read a 3-D layer output as transformer tokens (N, T, D) or as a 1-D map (N, C, L); "
    "by default tokens unless the input is a (N, C, L) signal",
    optional=True,
)


def tokens_to_grid(tokens: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """Token outputs ``(..., T, D)`` as feature maps ``(..., D, H, W)``, prefix tokens dropped.

    Parameters
    ----------
    tokens : Tensor
        Outputs of a transformer layer; the last ``H·W`` tokens are the patches in row order.
    grid : tuple of int, optional
        ``(H, W)``; by default the largest square grid that fits, the rest taken as prefix.
    """
    count, depth = tokens.shape[-2:]
    if grid is None:
        side = math.isqrt(count)
        if side < 2:
            raise InvalidInputError(f"cannot lay {count} tokens out on a grid; pass grid=(H, W)")
        grid = (side, side)
    height, width = grid
    prefix = count - height * width
    if prefix < 0:
        raise InvalidInputError(
            f"a {height}×{width} grid needs {height * width} tokens; the layer has {count}"
        )
    patches = tokens[..., prefix:, :]
    return patches.reshape(*tokens.shape[:-2], height, width, depth).movedim(-1, -3)


class CAMExplainer(Explainer):
    """Base of the class activation maps: which layer, ReLU or not, how tokens form a grid.

    Parameters
    ----------
    model : torch.nn.Module or adapter
        The model to explain.
    layer : str, torch.nn.Module or None
        The layer whose activations are weighed: a name (``"_blocks.15"``), the module itself,
        or None / ``"auto"`` for the last module with a spatial output before global pooling.
    relu : bool
        Keep only positive evidence, as in the papers; False keeps the negative evidence too.
    grid : tuple of int, optional
        ``(H, W)`` of a transformer layer's patch tokens (inferred by default).
    tokens : bool, optional
        Read a 3-D layer output as transformer tokens ``(N, T, D)`` (True) or as a 1-D feature
        map ``(N, C, L)`` (False, a ``Conv1d`` layer); by default tokens, unless the input is a
        ``(N, C, L)`` signal.
    """

    adapter: LayerGradientAdapter
    options = (LAYER, RELU, GRID, TOKENS)

    def __init__(
        self,
        model: object,
        *,
        layer: LayerLike = LAYER.default,
        relu: bool = RELU.default,
        grid: tuple[int, int] | None = GRID.default,
        tokens: bool | None = TOKENS.default,
    ) -> None:
        super().__init__(model)
        if not isinstance(self.adapter, LayerAccessAdapter):
            raise LayerError(
                f"{self.name} needs the model's layers, which {type(self.adapter).__name__} "
                "does not give; explain it with a gradient method (gradient, integrated_gradients)"
            )
        self.layer = layer_name(self.adapter.model, layer)
        self.relu = RELU.check(relu)
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.tokens = TOKENS.check(tokens)

    def params(self) -> dict[str, Any]:
        """Configuration."""
        return {"layer": self.layer or "auto", "relu": self.relu, "grid": self.grid}

    def layer_for(self, x: Tensor) -> str:
        """The layer's name (chosen for inputs shaped like ``x`` when automatic)."""
        return self.adapter.resolve_layer(self.layer, x)

    def reads_tokens(self, x: Tensor, captured: Tensor, batch_dims: int = 1) -> bool:
        """Whether the layer's output, captured for inputs ``x``, is transformer tokens."""
        return reads_as_tokens(x.ndim, captured.ndim - batch_dims + 1, self.tokens)

    def feature_map(self, x: Tensor, captured: Tensor, batch_dims: int = 1) -> Tensor:
        """The tensor captured for inputs ``x`` as ``(*batch, C, *S)``: tokens laid out on
        their grid."""
        if self.reads_tokens(x, captured, batch_dims):
            return tokens_to_grid(captured, self.grid)
        if captured.ndim < batch_dims + 2:
            raise InvalidInputError(
                f"the layer's output {tuple(captured.shape)} has no spatial dimensions; choose a "
                "layer before global pooling (salience layers MODEL shows the shapes)"
            )
        return captured

    def channel_dim(self, x: Tensor, captured: Tensor) -> int:
        """The channel dimension of the layer's raw output: last for tokens, else 1."""
        return -1 if self.reads_tokens(x, captured) else 1

    def finish(self, cam: Tensor) -> Tensor:
        """ReLU unless negative evidence is kept."""
        return cam.clamp_min(0) if self.relu else cam

    def layer_info(self, x: Tensor, activations: Tensor | None) -> dict[str, Any]:
        """The layer looked at and the resolution of its feature map."""
        info: dict[str, Any] = {"layer": self.layer_for(x)}
        if activations is not None:
            info["feature_shape"] = list(self.feature_map(x, activations).shape[1:])
        return info


class GradientCAM(CAMExplainer, SinglePassExplainer):
    """A CAM computed from the layer's activations and gradients of one pass."""

    def need(self, x: Tensor) -> Need:
        """The layer's activations and their gradients."""
        return Need(layer=self.layer_for(x), layer_grad=True)

    def maps_from(self, x: Tensor, out: Outputs) -> Tensor:
        """:meth:`weigh` on the feature maps, then the ReLU."""
        assert out.activations is not None and out.layer_grad is not None
        activations = self.feature_map(x, out.activations).unsqueeze(1)
        gradients = self.feature_map(x, out.layer_grad, batch_dims=2)
        return self.finish(self.weigh(activations, gradients))

    def info(self, x: Tensor, out: Outputs) -> dict[str, Any]:
        """The layer looked at."""
        return self.layer_info(x, out.activations)

    def weigh(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """The map (N, K, *S) from activations (N, 1, C, *S) and gradients (N, K, C, *S)."""
        raise NotImplementedError


def _spatial(t: Tensor) -> tuple[int, ...]:
    """The spatial dimensions of a ``(N, K, C, *S)`` tensor."""
    return tuple(range(3, t.ndim))


def _expand(weights: Tensor, like: Tensor) -> Tensor:
    """Channel weights ``(N, K, C)`` broadcastable against ``(N, K, C, *S)``."""
    return weights.reshape(*weights.shape, *([1] * (like.ndim - 3)))


@register_explainer("gradcam")
class GradCAM(GradientCAM):
    """Grad-CAM: activations weighted by their spatially averaged gradients."""

    paper = "Selvaraju et al. 2017"

    def weigh(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``Σ_c mean_s(G_c) · A_c``."""
        weights = gradients.mean(dim=_spatial(gradients))
        return (_expand(weights, gradients) * activations).sum(dim=2)


@register_explainer("gradcam++")
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++: positive gradients weighted by second/third-order terms of exp(score).

    With ``Y = exp(S)`` and a score ``S`` piecewise linear in the activations, the paper's
    pixel weights are ``α = G² / (2 G² + Σ_s A · G³)`` (zero where ``G = 0``); they are computed
    as the equal ``1 / (2 + Σ_s A · G)``, which does not underflow. The channel weight is
    ``Σ_s α · relu(G)``; the paper's common factor ``exp(S)`` is left out (it scales the map and
    overflows for large logits), as pytorch-grad-cam does.
    """

    paper = "Chattopadhay et al. 2018"

    def weigh(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``Σ_c (Σ_s α · relu(G_c)) · A_c``."""
        spatial = _spatial(gradients)
        totals = activations.sum(dim=spatial, keepdim=True)
        denominator = 2 + totals * gradients
        usable = (gradients != 0) & (denominator != 0)
        alpha = torch.where(usable, 1 / torch.where(usable, denominator, 1), 0)
        weights = (alpha * gradients.clamp_min(0)).sum(dim=spatial)
        return (_expand(weights, gradients) * activations).sum(dim=2)


@register_explainer("xgradcam")
class XGradCAM(GradientCAM):
    """XGrad-CAM: gradients averaged with the activations as weights (axiom-based)."""

    paper = "Fu et al. 2020"
    eps: ClassVar[float] = 1e-7

    def weigh(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``Σ_c (Σ_s G_c A_c / (Σ_s A_c + ε)) · A_c``, ε = 1e-7."""
        spatial = _spatial(gradients)
        totals = activations.sum(dim=spatial)
        weights = (gradients * activations).sum(dim=spatial) / (totals + self.eps)
        return (_expand(weights, gradients) * activations).sum(dim=2)


@register_explainer("layercam")
class LayerCAM(GradientCAM):
    """Layer-CAM: every position weighted by its own positive gradient."""

    paper = "Jiang et al. 2021"

    def weigh(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``Σ_c relu(G_c) ⊙ A_c``."""
        return (gradients.clamp_min(0) * activations).sum(dim=2)


@register_explainer("hirescam")
class HiResCAM(GradientCAM):
    """HiResCAM: activations times their gradients, element-wise, summed over channels."""

    paper = "Draelos & Carin 2020"

    def weigh(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``Σ_c G_c ⊙ A_c``."""
        return (gradients * activations).sum(dim=2)


@register_explainer("eigencam")
class EigenCAM(CAMExplainer, SinglePassExplainer):
    """Eigen-CAM: the activations projected on their first principal component (class-agnostic).

    Each sample's activations are seen as ``S`` positions × ``C`` channels, centred over the
    positions, and projected on the first right singular vector. The sign of a singular vector
    is arbitrary; it is chosen so that the projection correlates positively with the total
    activation at each position. The same map is returned for every target. Non-finite
    activations (a model that overflows) raise
    :class:`~salience.adapters.base.NonFiniteOutputError` instead of failing inside the SVD.
    """

    paper = "Muhammad & Yeasin 2020"

    def need(self, x: Tensor) -> Need:
        """The layer's activations; no gradient."""
        return Need(layer=self.layer_for(x))

    def maps_from(self, x: Tensor, out: Outputs) -> Tensor:
        """The first-component projection, repeated for each of the K targets."""
        assert out.activations is not None
        check_finite_output(out.activations, "the layer activations Eigen-CAM decomposes")
        features = self.feature_map(x, out.activations)
        n, channels, *spatial = features.shape
        positions = features.reshape(n, channels, -1).transpose(1, 2).double()
        centred = positions - positions.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        projection = centred @ vh[:, 0, :].unsqueeze(-1)
        totals = positions.sum(dim=2, keepdim=True)
        sign = torch.where((projection * (totals - totals.mean(1, keepdim=True))).sum(1) < 0, -1, 1)
        cam = (projection * sign.unsqueeze(1)).reshape(n, 1, *spatial).to(features.dtype)
        return self.finish(cam).expand(n, out.scores.shape[1], *spatial).clone()

    def info(self, x: Tensor, out: Outputs) -> dict[str, Any]:
        """The layer looked at."""
        return self.layer_info(x, out.activations)


@register_explainer("guided_gradcam")
class GuidedGradCAM(CAMExplainer):
    """Guided Grad-CAM: guided backpropagation times the Grad-CAM upsampled to the input.

    Two passes (the guided ReLU rule must not change the Grad-CAM gradients); the result has the
    input's resolution, ``(N, K, C, *S)``. The CAM is upsampled (linearly, bilinearly or
    trilinearly by the input's spatial rank), not normalized.
    """

    paper = "Selvaraju et al. 2017"

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """Guided backprop and Grad-CAM on the same targets, multiplied."""
        if x.ndim < 3:
            raise InvalidInputError(
                f"guided_gradcam needs inputs with spatial axes (N, C, *S), got shape "
                f"{tuple(x.shape)}; explain feature vectors with gradient or integrated_gradients"
            )
        gradcam = GradCAM(
            self.adapter, layer=self.layer, relu=self.relu, grid=self.grid, tokens=self.tokens
        )
        guided, cam = attribute_shared([GuidedBackprop(self.adapter), gradcam], x, spec, score)
        upsampled = upsample(cam.maps, tuple(x.shape[2:]))
        return Attribution(
            guided.maps * upsampled.unsqueeze(2), cam.selection, cam.scores, cam.info, cam.outputs
        )
