"""Which layer a class activation map looks at: layer tables, automatic choice, name lookup.

A layer is named as ``model.named_modules()`` names it (``"_blocks.15"``, ``"features.29"``), given
as the module object itself, or chosen automatically: the last module to finish whose output is
a feature map of the input's spatial rank with more than one position — ``(N, C, H, W)`` for
images, ``(N, C, D, H, W)`` for volumes, ``(N, C, L)`` for signals — i.e. the last feature map
before global pooling.

How a layer's output is read is decided once, from its shape and the input's
(:func:`reads_as_tokens`): a ``(N, T, D)`` output of an image model is transformer tokens, the
same shape in a model of ``(N, C, L)`` signals is a 1-D feature map.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from salience.errors import SalienceError, UnsupportedError

AUTO = "auto"
LayerLike = str | nn.Module | None


class LayerError(SalienceError, LookupError):
    """A layer that the model does not have, or that cannot be used for a CAM."""


@dataclass(frozen=True)
class LayerInfo:
    """One module seen during a forward pass.

    Attributes
    ----------
    name : str
        Its name in ``model.named_modules()``.
    kind : str
        Its class name.
    shape : tuple of int or None
        The output shape of its last call, batch dimension included; None when the output is
        not one tensor.
    calls : int
        How often it ran during one forward pass (a CAM sees the last call).
    input_ndim : int
        The rank of the input it was traced on, batch dimension included (4 for images).
    """

    name: str
    kind: str
    shape: tuple[int, ...] | None
    calls: int
    input_ndim: int = 4

    @property
    def spatial(self) -> bool:
        """True for a feature map of the input's spatial rank, ``(N, C, *S)``, with more than
        one position."""
        return (
            self.shape is not None
            and len(self.shape) == self.input_ndim >= 3
            and math.prod(self.shape[2:]) > 1
        )


def reads_as_tokens(input_ndim: int, output_ndim: int, tokens: bool | None = None) -> bool:
    """Whether a layer's output is read as transformer tokens ``(N, T, D)``.

    Only a 3-D output can be tokens. ``tokens`` decides when given; by default a 3-D output is
    tokens when the input is not itself a ``(N, C, L)`` signal, whose 3-D layer outputs are
    1-D feature maps (a ``Conv1d``).
    """
    if output_ndim != 3:
        return False
    return input_ndim != 3 if tokens is None else tokens


def spatial_layout(input_ndim: int) -> str:
    """``(N, C, *S)`` written out for an input of this rank: ``(N, C, D, H, W)`` for 5."""
    names = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}.get(input_ndim - 2)
    return f"(N, C, {', '.join(names)})" if names else "(N, C, *S)"


def trace_layers(model: nn.Module, sample: Tensor) -> tuple[list[LayerInfo], list[str]]:
    """Run ``model`` once on ``sample`` and record every named module's output.

    Returns
    -------
    layers : list of LayerInfo
        In the order the modules were first called.
    finished : list of str
        Names in the order their last call finished (containers finish after their children).
    """
    first_call: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}
    finished: dict[str, int] = {}
    kinds: dict[str, str] = {}
    counter = [0]
    handles = []

    def pre_hook(name: str):
        def hook(_module: nn.Module, _inputs: tuple) -> None:
            first_call.setdefault(name, len(first_call))

        return hook

    def post_hook(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else None
            calls[name] = calls.get(name, 0) + 1
            finished[name] = counter[0]
            counter[0] += 1

        return hook

    try:
        for name, module in model.named_modules():
            if not name:
                continue
            kinds[name] = type(module).__name__
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook(name)))
        with torch.inference_mode():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    layers = [
        LayerInfo(name, kinds[name], shapes.get(name), calls.get(name, 0), sample.ndim)
        for name in sorted(first_call, key=first_call.__getitem__)
    ]
    return layers, sorted(finished, key=finished.__getitem__)


def choose_layer(layers: Sequence[LayerInfo], finished: Sequence[str]) -> str:
    """The last module to finish whose output is a feature map of the input's spatial rank.

    Raises
    ------
    LayerError
        When no module outputs ``(N, C, *S)`` (the input's rank) with more than one position.
    """
    spatial = {info.name for info in layers if info.spatial}
    for name in reversed(finished):
        if name in spatial:
            return name
    layout = spatial_layout(layers[0].input_ndim if layers else 4)
    raise LayerError(
        f"found no layer with a spatial output {layout}; pass layer=NAME (for a vision "
        "transformer, a block whose token output (N, T, D) forms a grid)"
    )


def layer_name(model: nn.Module, layer: LayerLike) -> str | None:
    """The name of ``layer`` in ``model``; None when the layer is to be chosen automatically.

    Raises
    ------
    LayerError
        For a name that is not in the model (close matches are listed) or a module that is not
        part of it.
    """
    if layer is None or (isinstance(layer, str) and layer == AUTO):
        return None
    if isinstance(layer, str) and layer:
        try:
            model.get_submodule(layer)
            return layer
        except AttributeError:
            pass
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name
        raise LayerError(
            f"the {type(layer).__name__} module passed as layer is not part of this model; pass "
            "one of its submodules or its name (salience layers MODEL lists them)"
        )
    if not isinstance(layer, str):
        raise UnsupportedError(
            f"layer must be a module name, a module or None, not {type(layer).__name__}"
        )
    if layer in names:
        return layer
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise LayerError(f"the model has no layer {layer!r}{hint} (salience layers MODEL lists them)")
