"""Feature ablation: the score drop when a feature, or a group of features, takes a baseline value.

The perturbation of tabular models (Captum's ``FeatureAblation``): every group of the feature
mask is replaced by the baseline in turn, the model scores each ablated copy, and each feature of
the group gets ``score(x) − score(ablated)``. With no mask every scalar of a sample is a group of
its own. The ablated copies go through the perturbation engine
(:func:`salience.methods.masking.masked_scores`), chunk by chunk.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from salience.adapters.base import BlackBoxAdapter
from salience.errors import InvalidInputError
from salience.methods.base import Attribution, Explainer, register_explainer
from salience.methods.baselines import BASELINE, BaselineLike, baseline_like, check_baseline
from salience.methods.masking import masked_scores
from salience.methods.options import CHUNK_SIZE, PROGRESS, Option
from salience.methods.sampling import map_in_chunks
from salience.targets import TargetSpec

ABLATION_CHUNK_SIZE = 64
"""Ablated copies per forward pass: rows of features are small, so more fit in one pass."""
MAX_GROUPS = 4096
"""The most groups one sample is ablated in (one forward pass each); images take occlusion."""
FEATURE_MASK = Option(
    "feature_mask",
    object,
    None,
    "group id of each feature (shape of one sample, or of the batch); features with the same "
    "id are ablated together; default: each feature alone",
    optional=True,
)


def feature_groups(feature_mask: Tensor | None, x: Tensor) -> Tensor:
    """The group id of every scalar of ``x``, as a long tensor of ``x``'s shape.

    Parameters
    ----------
    feature_mask : Tensor, optional
        Integer ids broadcastable to ``x`` (one sample's shape, ``(1, …)`` or the batch's);
        None gives every scalar of a sample its own group.
    x : Tensor
        The inputs ``(N, …)``.

    Raises
    ------
    InvalidInputError
        For a mask that is not integer or does not fit ``x``.
    """
    if feature_mask is None:
        ids = torch.arange(x[0].numel(), device=x.device).reshape(x.shape[1:])
        return ids.expand_as(x)
    mask = torch.as_tensor(feature_mask, device=x.device)
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise InvalidInputError(
            f"feature_mask must hold integer group ids, got {mask.dtype}; give one id per feature"
        )
    if mask.ndim == x.ndim - 1:
        mask = mask.unsqueeze(0)
    try:
        return mask.long().expand_as(x)
    except RuntimeError:
        raise InvalidInputError(
            f"feature_mask of shape {tuple(mask.shape)} does not fit inputs of shape "
            f"{tuple(x.shape)}; give one group id per feature, shape {tuple(x.shape[1:])}"
        ) from None


@register_explainer("feature_ablation")
class FeatureAblation(Explainer):
    """Feature ablation: ``score(x) − score(x with the feature's group set to the baseline)``.

    As Captum's ``FeatureAblation``: each group of ``feature_mask`` (default: each feature) is
    replaced by the baseline at once, and every feature of the group gets the same score drop.
    The explanation of tabular models ``(N, F)``; any input shape works, with at most
    :data:`MAX_GROUPS` groups per sample (images take ``occlusion``).

    Parameters
    ----------
    model : torch.nn.Module, adapter or path of an ONNX file
        The model to explain.
    feature_mask : Tensor, optional
        Integer group ids broadcastable to the inputs; None: every feature alone.
    baseline : {"zeros", "mean"}, float or Tensor
        The value an ablated feature takes: zeros, each sample's mean, a constant, or a tensor
        broadcastable to the inputs (e.g. the feature means of reference rows).
    chunk_size : int, optional
        Ablated copies per forward pass; does not change the attributions.
    progress : bool
        Show a progress bar.
    """

    paper = "Captum's FeatureAblation (Kokhlikyan et al. 2020)"
    needs_gradients = False
    adapter: BlackBoxAdapter
    options = (FEATURE_MASK, BASELINE, CHUNK_SIZE, PROGRESS)

    def __init__(
        self,
        model: object,
        *,
        feature_mask: Tensor | None = FEATURE_MASK.default,
        baseline: BaselineLike = BASELINE.default,
        chunk_size: int | None = CHUNK_SIZE.default,
        progress: bool = PROGRESS.default,
    ) -> None:
        super().__init__(model)
        self.feature_mask = FEATURE_MASK.check(feature_mask)
        check_baseline(BASELINE.check(baseline))
        self.baseline = baseline
        self.chunk_size = CHUNK_SIZE.check(chunk_size) or ABLATION_CHUNK_SIZE
        self.progress = PROGRESS.check(progress)

    def params(self) -> dict[str, Any]:
        """Configuration."""
        baseline = self.baseline if not isinstance(self.baseline, Tensor) else "tensor"
        return {"baseline": baseline, "grouped": self.feature_mask is not None}

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """Ablate each group of each sample, score the copies, spread the drops on the groups."""
        groups = feature_groups(self.feature_mask, x)
        every_ids = [torch.unique(groups[n]) for n in range(x.shape[0])]
        most = max(len(ids) for ids in every_ids)
        if most > MAX_GROUPS:
            raise InvalidInputError(
                f"feature_ablation would ablate {most} groups of one sample (at most "
                f"{MAX_GROUPS}); group the features with feature_mask, or explain images with "
                "occlusion"
            )
        selection, scores, outputs = self.unperturbed_pass(x, spec, score)
        substrate = baseline_like(x, self.baseline)
        passes = sum(len(ids) for ids in every_ids)
        maps = torch.empty(x.shape[0], selection.k, *x.shape[1:], dtype=x.dtype, device=x.device)

        def ablated_sample(rows: slice) -> Tensor:
            n = rows.start
            own, ids = groups[n], every_ids[n]

            def ablating(chosen: slice) -> Tensor:
                return (own.unsqueeze(0) != ids[chosen].view(-1, *[1] * own.ndim)).to(x.dtype)

            ablated = masked_scores(
                self.adapter,
                x[n : n + 1],
                ablating,
                len(ids),
                selection.take(rows),
                score,
                substrate=substrate[rows],
                chunk_size=self.chunk_size,
                run_passes=passes,
            )
            drops = scores[n].double() - ablated.double()  # (groups, K)
            position = torch.searchsorted(ids, own.reshape(-1))  # each scalar's group
            return drops[position].T.reshape(1, selection.k, *own.shape).to(x.dtype)

        for rows, values in map_in_chunks(
            x.shape[0], ablated_sample, 1, progress=self.progress, description=self.name
        ):
            maps[rows] = values
        info = {"groups": [len(ids) for ids in every_ids]}
        return Attribution(maps, selection, scores, info, outputs)
