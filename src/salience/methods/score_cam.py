"""Gradient-free CAMs that weigh each channel by what it does to the score: Score-CAM, Ablation-CAM.

Both evaluate one perturbed forward pass per channel of the layer, under ``torch.inference_mode``
and in chunks, on the adapter's inference copy (BatchNorm folded, channels-last). Channels whose
perturbation provably changes nothing are skipped: their weight is exactly zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from salience.adapters.base import Need, Outputs
from salience.errors import InvalidInputError
from salience.methods.base import Attribution, register_explainer
from salience.methods.cam import CAMExplainer
from salience.methods.masking import masked_scores, weight_kind
from salience.methods.options import CHUNK_SIZE, PROGRESS, SOFTMAX, Option
from salience.methods.sampling import map_in_chunks
from salience.postprocess import upsample
from salience.targets import Selection, TargetSpec, resolve, target_scores

SCORE_CAM_CHUNK_SIZE = 8
"""Masked images per forward pass of Score-CAM: 8 to 24 are equally fast on 2 cores, 8 needs half
the memory of 16 (measured: bench/cam_chunk_size.py, bench/cams.py)."""
ABLATION_CHUNK_SIZE = 256
"""Ablated channels per pass of Ablation-CAM: each pass also reruns the layers before the ablated
one, so bigger is faster (256: 1.08× one pass over all 320 channels of ``_blocks.15``; 64: 1.4×);
memory grows with it (+183 MiB at 256, +83 MiB at 64 on that layer)."""

TOP_CHANNELS = Option(
    "top_channels",
    int,
    None,
    "approximate Score-CAM (Faster-Score-CAM, tf-keras-vis max_N): mask with only the N "
    "channels of largest spatial variance, the others weigh 0; default: every channel (exact)",
    low=1,
    optional=True,
)
WEIGHTING = Option(
    "weighting",
    str,
    "paper",
    "Score-CAM channel weights: the paper's score increase, or pytorch-grad-cam's softmax over "
    "the channels of the masked inputs' scores (approximate: its maps, not the paper's)",
    choices=("paper", "channel_softmax"),
)


class _PerturbationCAM(CAMExplainer):
    """A CAM whose channel weights come from one perturbed forward pass per channel."""

    default_chunk_size = SCORE_CAM_CHUNK_SIZE
    options = (CHUNK_SIZE, PROGRESS)

    def __init__(
        self,
        model: object,
        *,
        chunk_size: int | None = CHUNK_SIZE.default,
        progress: bool = PROGRESS.default,
        **cam_options: Any,
    ) -> None:
        super().__init__(model, **cam_options)
        self.chunk_size = CHUNK_SIZE.check(chunk_size) or self.default_chunk_size
        self.progress = PROGRESS.check(progress)

    def capture(self, x: Tensor, spec: TargetSpec, score: str) -> tuple[str, Outputs, Selection]:
        """One forward pass: the layer's activations, the scores and the resolved target."""
        name = self.layer_for(x)
        chosen: list[Selection] = []

        def score_fn(logits: Tensor) -> Tensor:
            chosen.append(resolve(spec, logits))
            return target_scores(logits, chosen[-1], score)

        out = self.adapter.run(x, score_fn, Need(layer=name))
        assert out.activations is not None
        return name, out, chosen[-1]

    def weighted_sum(self, weights: Tensor, features: Tensor) -> Tensor:
        """``Σ_c w_c A_c`` for weights ``(K, C)`` and one sample's features ``(C, *S)``, ReLU'd."""
        flat = weights.to(features.dtype) @ features.reshape(features.shape[0], -1)
        return self.finish(flat.reshape(weights.shape[0], *features.shape[1:]))


@register_explainer("scorecam")
class ScoreCAM(_PerturbationCAM):
    """Score-CAM: each channel weighted by the score gain of the input masked by that channel.

    Channel ``k`` of the layer is upsampled to the input (bilinear; linear for signals,
    trilinear for volumes), min-max normalized to
    ``[0, 1]`` and multiplies the input; its weight is the target's probability (softmax for
    class logits, σ of the logit for a binary or multi-label output) on that
    masked input minus the probability on the baseline, the input masked by zeros (the paper's
    "increase of confidence"). A constant channel has no normalized mask, its masked input is the
    baseline and its weight is exactly zero: such channels are skipped.

    pytorch-grad-cam instead applies a softmax over the channels to the masked inputs' target
    logits, so its maps differ from the paper's.

    Two known approximations are options, never defaults, and an explanation made with one says
    so in ``info["approximation"]``: ``top_channels=N`` (Faster-Score-CAM, Wang et al. 2020b,
    tf-keras-vis' ``max_N``) masks with the ``N`` channels of largest spatial variance only;
    ``weighting="channel_softmax"`` gives pytorch-grad-cam's maps (weights ``softmax_c`` of the
    masked inputs' explained scores, a constant channel's masked input being zeros).

    Parameters
    ----------
    softmax : bool
        Weigh by the target's probability (paper: a softmax for classes, σ for labels); False
        weighs by the explained score itself.
        Regression outputs and custom targets always use the explained score.
    top_channels : int, optional
        Mask with only this many channels, those of largest spatial variance (approximate).
    weighting : {"paper", "channel_softmax"}
        The paper's weights, or pytorch-grad-cam's softmax over channels (approximate).
    chunk_size : int, optional
        Masked inputs per forward pass; does not change the map.
    progress : bool
        Show a progress bar over the channels.

    The other parameters are those of :class:`~salience.methods.cam.CAMExplainer`.
    """

    paper = "Wang et al. 2020"
    reads_output_kind = True
    options = (SOFTMAX, TOP_CHANNELS, WEIGHTING)

    def __init__(
        self,
        model: object,
        *,
        softmax: bool = SOFTMAX.default,
        top_channels: int | None = TOP_CHANNELS.default,
        weighting: str = WEIGHTING.default,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.softmax = SOFTMAX.check(softmax)
        self.top_channels = TOP_CHANNELS.check(top_channels)
        self.weighting = WEIGHTING.check(weighting)

    def params(self) -> dict[str, Any]:
        """Configuration."""
        return {
            **super().params(),
            "softmax": self.softmax,
            "top_channels": self.top_channels,
            "weighting": self.weighting,
        }

    def approximation(self) -> str | None:
        """How the maps depart from the paper's, in words; None for the exact method."""
        parts = []
        if self.top_channels is not None:
            parts.append(
                f"top {self.top_channels} channels by variance (Faster-Score-CAM), others weigh 0"
            )
        if self.weighting == "channel_softmax":
            parts.append("pytorch-grad-cam's softmax over channels of the masked scores")
        return "; ".join(parts) or None

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """Score every non-constant channel's masked input, chunk by chunk."""
        if x.ndim < 3:
            raise InvalidInputError(
                f"scorecam masks inputs with spatial axes (N, C, *S); got shape {tuple(x.shape)}"
            )
        _, out, selection = self.capture(x, spec, score)
        features = self.feature_map(x, out.activations)
        if features.ndim != x.ndim:
            raise InvalidInputError(
                f"scorecam needs a {x.ndim - 2}-D feature map like its input's; the layer gives "
                f"{tuple(features.shape)} (choose a layer of that rank)"
            )
        grad_cam_weights = self.weighting == "channel_softmax"
        kind = (
            score
            if grad_cam_weights
            else weight_kind(out.outputs, selection, score, self.softmax, output_kind)
        )
        baseline = self.adapter.forward(torch.zeros_like(x[:1]))
        maps, skipped = [], 0
        for n in range(x.shape[0]):
            own = selection.take(slice(n, n + 1))
            start = target_scores(baseline, own, kind)[0]
            flat = features[n].flatten(1)
            keep = torch.nonzero(flat.amax(dim=1) > flat.amin(dim=1)).flatten()
            skipped += features.shape[1] - len(keep)
            if self.top_channels is not None and self.top_channels < len(keep):
                variance = flat[keep].double().var(dim=1, correction=0)
                keep = keep[variance.topk(self.top_channels).indices].sort().values
            weights = torch.zeros(selection.k, features.shape[1], dtype=torch.float64)

            def channel_masks(rows: slice, n: int = n, keep: Tensor = keep) -> Tensor:
                masks = upsample(features[n, keep[rows]], tuple(x.shape[2:]))
                flat = (-1,) + (1,) * (x.ndim - 2)
                low = masks.flatten(1).amin(dim=1).reshape(flat)
                high = masks.flatten(1).amax(dim=1).reshape(flat)
                return ((masks - low) / (high - low)).unsqueeze(1)

            values = masked_scores(
                self.adapter,
                x[n : n + 1],
                channel_masks,
                len(keep),
                own,
                kind,
                chunk_size=self.chunk_size,
                progress=self.progress,
                description=f"{self.name} {n + 1}/{x.shape[0]}" if x.shape[0] > 1 else self.name,
            )
            if grad_cam_weights:  # a channel not masked with scores as the zeros input does
                weights[:] = start.double().reshape(-1, 1)
                weights[:, keep] = values.T.double()
                weights = weights.softmax(dim=1)
            else:
                weights[:, keep] = (values - start).T.double()
            maps.append(self.weighted_sum(weights, features[n]))
        info = {**self.layer_info(x, out.activations), "weights": kind, "skipped_channels": skipped}
        if grad_cam_weights:
            info["weights"] = f"softmax over channels of the {kind}"
        approximation = self.approximation()
        if approximation is not None:
            info["approximation"] = approximation
        return Attribution(torch.stack(maps), selection, out.scores, info, out.outputs)


@register_explainer("ablationcam")
class AblationCAM(_PerturbationCAM):
    """Ablation-CAM: each channel weighted by the relative score drop when it is zeroed.

    The weight of channel ``k`` is ``(S − S_k) / S``, with ``S_k`` the target score when channel
    ``k`` of the layer's output is zero; a forward hook of the adapter zeroes it, no module is
    replaced. The layers before the ablated one run once per chunk of channels, only the rest of
    the network runs per channel (when the model allows it; see
    :meth:`~salience.adapters.torch.TorchAdapter.scaled_layer_outputs`). Channels that are zero
    already are skipped: their weight is exactly zero. Where ``S = 0`` the drop is not divided.

    Parameters
    ----------
    chunk_size : int, optional
        Ablated channels per pass; does not change the map.
    progress : bool
        Show a progress bar over the channels.

    The other parameters are those of :class:`~salience.methods.cam.CAMExplainer`.
    """

    paper = "Desai & Ramaswamy 2020"
    default_chunk_size = ABLATION_CHUNK_SIZE

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """Zero every non-zero channel in turn, chunk by chunk."""
        name, out, selection = self.capture(x, spec, score)
        raw = out.activations
        assert raw is not None
        dim = self.channel_dim(x, raw)
        features = self.feature_map(x, raw)
        channels = raw.shape[dim]
        maps, skipped = [], 0
        for n in range(x.shape[0]):
            own = selection.take(slice(n, n + 1))
            original = out.scores[n]
            per_channel = raw[n].movedim(dim if dim < 0 else dim - 1, 0).reshape(channels, -1)
            keep = torch.nonzero(per_channel.abs().amax(dim=1) > 0).flatten()
            skipped += channels - len(keep)
            weights = torch.zeros(selection.k, channels, dtype=torch.float64)

            def ablated_scores(rows: slice, n: int = n, keep: Tensor = keep, own=own) -> Tensor:
                chosen = keep[rows]
                scales = torch.ones(len(chosen), channels, device=x.device, dtype=raw.dtype)
                scales[torch.arange(len(chosen)), chosen] = 0
                outputs = self.adapter.scaled_layer_outputs(
                    x[n : n + 1], name, scales, channel_dim=dim
                )
                return target_scores(outputs, own.repeat(len(chosen)), score)

            passes = map_in_chunks(
                len(keep),
                ablated_scores,
                self.chunk_size,
                progress=self.progress,
                description=f"{self.name} {n + 1}/{x.shape[0]}" if x.shape[0] > 1 else self.name,
            )
            denominator = torch.where(original != 0, original, 1).double()
            for rows, values in passes:
                drop = (original.double() - values.double()) / denominator
                weights[:, keep[rows]] = drop.T
            maps.append(self.weighted_sum(weights, features[n]))
        info = {**self.layer_info(x, raw), "skipped_channels": skipped}
        return Attribution(torch.stack(maps), selection, out.scores, info, out.outputs)
