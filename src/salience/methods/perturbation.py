"""Methods that need only the model's outputs: occlusion and RISE. They explain black boxes too.

Both work along the input's spatial axes ``(N, C, *S)``, whatever their number: windows and masks
are 2-D on images, 3-D on volumes ``(N, C, D, H, W)`` and 1-D along time on signals
``(N, C, L)``; every channel is occluded or masked together.

Both run through the perturbation engine (:func:`salience.methods.masking.masked_scores`): masks
are made chunk by chunk, so memory stays bounded however many there are, and the same seed gives
the same map whatever the chunk size.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from salience.adapters.base import BlackBoxAdapter
from salience.errors import InvalidInputError
from salience.methods.base import Attribution, Explainer, register_explainer
from salience.methods.baselines import BASELINE, BaselineLike, baseline_like, check_baseline
from salience.methods.convergence import (
    AGREEMENT_THRESHOLD,
    AUTO,
    half_of,
    split_half_info,
    with_count,
)
from salience.methods.masking import masked_scores, weight_kind
from salience.methods.options import CHUNK_SIZE, PROGRESS, SEED, SOFTMAX, Option
from salience.methods.sampling import chunks, make_generator
from salience.postprocess import upsample
from salience.targets import TargetSpec, resolve, target_scores

PERTURBATION_CHUNK_SIZE = 8
"""Perturbed images per forward pass: the fastest with the eager copy, 1.02× the best with the
fused one, a fifth of the memory of 64 (measured: bench/perturbation.py)."""
WEIGHTING_CHUNK_SIZE = 64
"""Masks per step of RISE's weighted sum (float32 products summed in float64)."""
WINDOW = Option(
    "window",
    int,
    16,
    "occlusion window (pixels)",
    flag="window",
    low=1,
    more="one per spatial axis",
    request_max=256,
)
STRIDE = Option(
    "stride",
    int,
    None,
    "occlusion stride (pixels), at most the window; default: half the window (8 for 16)",
    flag="stride",
    low=1,
    optional=True,
    more="one per spatial axis",
    request_max=256,
)
N_MASKS = Option(
    "n_masks",
    int,
    4000,
    "RISE masks, or auto (doubled until the map converges, up to max_masks)",
    flag="masks",
    low=1,
    request_max=20_000,
    auto=True,
)
MAX_MASKS = Option("max_masks", int, 16_000, "the most masks n_masks='auto' may grow to", low=2)
MASK_GRID = Option("grid", int, 7, "cells per side of RISE's small binary grid", low=1)
KEEP = Option(
    "keep",
    float,
    0.5,
    "probability that a cell of a RISE mask is kept",
    low=0,
    low_open=True,
    high=1,
)


Sizes = int | tuple[int, ...]


def _sizes(value: Sizes, option: Option) -> tuple[int, ...]:
    """An int option that may also be given per spatial axis (height, width), each checked."""
    sizes = (value,) if isinstance(value, int) else tuple(value)
    if not sizes or any(option.problem(v) is not None for v in sizes):
        raise InvalidInputError(
            f"{option.name} must be a positive int or one per spatial axis "
            f"({option.bounds_text()}), got {value!r}"
        )
    return tuple(int(v) for v in sizes)


def _given(sizes: tuple[int, ...]) -> int | list[int]:
    """Sizes as configured: one for every axis, or one per axis."""
    return sizes[0] if len(sizes) == 1 else list(sizes)


def per_axis(sizes: tuple[int, ...], rank: int, option: Option) -> tuple[int, ...]:
    """``sizes`` for each of ``rank`` spatial axes: one size is repeated, else one per axis."""
    if len(sizes) == 1:
        return sizes * rank
    if len(sizes) != rank:
        raise InvalidInputError(
            f"{option.name} {list(sizes)} gives {len(sizes)} sizes for an input with {rank} "
            f"spatial axes; give one size or {rank}"
        )
    return sizes


_FEATURE_ROWS_FIX = (
    "use feature_ablation (--method feature_ablation): each feature replaced by the baseline "
    "alone, or groups of features together (feature_mask=, --groups age+income,fee)"
)


def _check_spatial(x: Tensor, method: str) -> None:
    if x.ndim == 2:
        what = "slides a window" if method == "occlusion" else "masks the cells of a grid"
        raise InvalidInputError(
            f"{method} {what} along spatial axes, and rows of features {tuple(x.shape)} have "
            "none (neighbouring columns are not neighbours, so a window or stride across them "
            f"means nothing); {_FEATURE_ROWS_FIX}"
        )
    if x.ndim < 3:
        raise InvalidInputError(
            f"{method} perturbs images, volumes or signals, inputs with spatial axes (N, C, *S); "
            f"got shape {tuple(x.shape)}"
        )


def half_window(window: tuple[int, ...]) -> tuple[int, ...]:
    """The default stride: half the window along each axis (at least 1), so that neighbouring
    windows overlap by half, every pixel is covered, and window 16 keeps its stride of 8."""
    return tuple(max(1, w // 2) for w in window)


def check_window_stride(window: tuple[int, ...], stride: tuple[int, ...]) -> None:
    """Refuse a stride longer than the window along some axis: the pixels between two windows
    would be scored by none, and their map would be 0 / 0.

    Raises
    ------
    InvalidInputError
        Naming the window, the stride and the fix.
    """
    if len(window) != len(stride) and 1 not in (len(window), len(stride)):
        return  # per_axis names the mismatch once the input's axes are known
    rank = max(len(window), len(stride))
    axes = zip(per_axis(window, rank, WINDOW), per_axis(stride, rank, STRIDE), strict=True)
    for w, s in axes:
        if s > w:
            raise InvalidInputError(
                f"occlusion's stride {_given(stride)} is larger than its window "
                f"{_given(window)}: the pixels between two windows would be covered by none "
                f"and get no value; give a stride of at most {w}, a window of at least {s}, "
                "or no stride (half the window)"
            )


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window positions along one axis: every ``stride``, plus one flush with the far edge."""
    if window > size:
        raise InvalidInputError(f"a window of {window} does not fit in {size} pixels")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@register_explainer("occlusion")
class Occlusion(Explainer):
    """Occlusion: the score drop when a sliding window of the input is replaced by a baseline.

    Each pixel gets the mean drop over the windows that covered it (as Captum's ``Occlusion``).
    The window covers all channels and slides along every spatial axis (a box in a volume, a
    stretch of time in a signal); windows are placed every ``stride`` pixels, plus one flush
    with the far edge of each axis when the stride does not reach it, so every pixel counts.

    Parameters
    ----------
    model : torch.nn.Module, adapter or path of an ONNX file
        The model to explain.
    window : int or tuple of int
        Window size in pixels: one for every spatial axis, or one per axis (height, width).
    stride : int or tuple of int, optional
        Step between windows, likewise, at most the window (a longer one would leave pixels
        that no window covers); default: half the window along each axis (at least 1).
    baseline : {"zeros", "mean", "blur"}, float or Tensor
        What the window is filled with: zeros, the image's per-channel mean, a blurred copy of
        the image, a constant, or a tensor.
    chunk_size : int, optional
        Occluded images per forward pass; does not change the map.
    progress : bool
        Show a progress bar.
    """

    paper = "Zeiler & Fergus 2014"
    needs_gradients = False
    adapter: BlackBoxAdapter
    options = (WINDOW, STRIDE, BASELINE, CHUNK_SIZE, PROGRESS)

    def __init__(
        self,
        model: object,
        *,
        window: Sizes = WINDOW.default,
        stride: Sizes | None = STRIDE.default,
        baseline: BaselineLike = BASELINE.default,
        chunk_size: int | None = CHUNK_SIZE.default,
        progress: bool = PROGRESS.default,
    ) -> None:
        super().__init__(model)
        self.window = _sizes(window, WINDOW)
        if stride is None:
            self.stride = half_window(self.window)
        else:
            self.stride = _sizes(stride, STRIDE)
            check_window_stride(self.window, self.stride)
        check_baseline(BASELINE.check(baseline))
        self.baseline = baseline
        self.chunk_size = CHUNK_SIZE.check(chunk_size) or PERTURBATION_CHUNK_SIZE
        self.progress = PROGRESS.check(progress)

    def params(self) -> dict[str, Any]:
        """Configuration."""
        baseline = self.baseline if not isinstance(self.baseline, Tensor) else "tensor"
        return {
            "window": _given(self.window),
            "stride": _given(self.stride),
            "baseline": baseline,
        }

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """Slide the window, score every occluded image, average the drops per pixel."""
        _check_spatial(x, self.name)
        spatial = tuple(x.shape[2:])
        window = per_axis(self.window, len(spatial), WINDOW)
        stride = per_axis(self.stride, len(spatial), STRIDE)
        starts = [window_starts(*axis) for axis in zip(spatial, window, stride, strict=True)]
        boxes = [
            tuple(slice(s, s + w) for s, w in zip(corner, window, strict=True))
            for corner in itertools.product(*starts)
        ]
        selection, scores, outputs = self.unperturbed_pass(x, spec, score)
        substrate = baseline_like(x, self.baseline)

        def occluding(chosen: slice) -> Tensor:
            masks = torch.ones(chosen.stop - chosen.start, 1, *spatial, device=x.device)
            for i, box in enumerate(boxes[chosen]):
                masks[(i, slice(None), *box)] = 0
            return masks

        coverage = torch.zeros(spatial, dtype=torch.float64, device=x.device)
        for box in boxes:
            coverage[box] += 1
        maps = []
        for n in range(x.shape[0]):
            own = selection.take(slice(n, n + 1))
            occluded = masked_scores(
                self.adapter,
                x[n : n + 1],
                occluding,
                len(boxes),
                own,
                score,
                substrate=substrate[n : n + 1],
                chunk_size=self.chunk_size,
                progress=self.progress,
                description=self.name,
            )
            drops = (scores[n].double() - occluded.double()).T  # (K, windows)
            total = torch.zeros(selection.k, *spatial, dtype=torch.float64, device=x.device)
            spread = (slice(None), *([None] * len(spatial)))
            for i, box in enumerate(boxes):
                total[(slice(None), *box)] += drops[:, i][spread]
            maps.append((total / coverage).to(x.dtype))
        info = {"windows": len(boxes)}
        return Attribution(torch.stack(maps), selection, scores, info, outputs)


@register_explainer("rise")
class RISE(Explainer):
    """RISE: the average of random masks, each weighted by the score of the input it keeps.

    ``n_masks`` binary grids of ``grid`` cells per spatial axis (``grid × grid`` on images,
    ``grid³`` on volumes, ``grid`` along a signal), each cell kept with probability ``keep``,
    are upsampled (bi-/trilinearly) to ``(grid + 1) × cell`` pixels per axis and cropped at a
    random shift within one cell (Petsiuk et al. 2018); the map is
    ``Σ score_i · M_i / (n_masks · keep)``. The score is the target's probability (as in the
    paper): its softmax probability for class logits, σ of its logit for a binary or
    multi-label output (the output kind); ``softmax=False`` uses the explained score itself, as
    regression outputs and custom targets always do. Grids and
    shifts are drawn up front from ``seed`` (a few bytes per mask); the masks themselves are made
    chunk by chunk, so memory does not grow with ``n_masks``.

    Parameters
    ----------
    model : torch.nn.Module, adapter or path of an ONNX file
        The model to explain.
    n_masks : int or "auto"
        Number of masks (the paper uses 4000 for ImageNet models); ``"auto"`` doubles it from
        32 until the split-half agreement (``info["convergence"]``) is at least 0.75, up to
        ``max_masks``.
    max_masks : int
        The cap of ``"auto"``.
    grid : int
        Cells per side of the small binary grid (the paper's ``s``).
    keep : float
        Probability that a cell is kept (the paper's ``p``).
    seed : int or None
        Seed of the masks; the same seed gives the same map.
    softmax : bool
        Weigh masks by the target's probability (paper) rather than the explained score.
    chunk_size : int, optional
        Masked images per forward pass; does not change the map.
    progress : bool
        Show a progress bar.
    """

    paper = "Petsiuk et al. 2018"
    reads_output_kind = True
    needs_gradients = False
    adapter: BlackBoxAdapter
    options = (N_MASKS, MAX_MASKS, MASK_GRID, KEEP, SEED, SOFTMAX, CHUNK_SIZE, PROGRESS)

    def __init__(
        self,
        model: object,
        *,
        n_masks: int | str = N_MASKS.default,
        max_masks: int = MAX_MASKS.default,
        grid: int = MASK_GRID.default,
        keep: float = KEEP.default,
        seed: int | None = SEED.default,
        softmax: bool = SOFTMAX.default,
        chunk_size: int | None = CHUNK_SIZE.default,
        progress: bool = PROGRESS.default,
    ) -> None:
        super().__init__(model)
        self.n_masks = N_MASKS.check(n_masks)
        self.max_masks = MAX_MASKS.check(max_masks)
        self.grid = MASK_GRID.check(grid)
        self.keep = KEEP.check(keep)
        self.seed = SEED.check(seed)
        self.softmax = SOFTMAX.check(softmax)
        self.chunk_size = CHUNK_SIZE.check(chunk_size) or PERTURBATION_CHUNK_SIZE
        self.progress = PROGRESS.check(progress)

    def params(self) -> dict[str, Any]:
        """Configuration."""
        return {
            "n_masks": self.n_masks,
            **({"max_masks": self.max_masks} if self.n_masks == AUTO else {}),
            "grid": self.grid,
            "keep": self.keep,
            "seed": self.seed,
            "softmax": self.softmax,
        }

    def mask_maker(
        self, size: tuple[int, ...], device: torch.device, count: int | None = None
    ) -> Any:
        """``masks(rows)`` for inputs of spatial ``size``: the same masks for every chunking.

        ``count`` masks are drawn (default: ``n_masks``).
        """
        count = self.n_masks if count is None else count
        cell = tuple(math.ceil(side / self.grid) for side in size)
        generator = make_generator(self.seed, torch.device("cpu"))
        shape = (count, 1, *([self.grid] * len(size)))
        cells = (torch.rand(shape, generator=generator) < self.keep).float()
        shifts = torch.stack(
            [torch.randint(0, c, (count,), generator=generator) for c in cell], dim=1
        )
        upsampled = tuple((self.grid + 1) * c for c in cell)

        def masks(rows: slice) -> Tensor:
            large = upsample(cells[rows], upsampled)
            out = torch.empty(large.shape[0], 1, *size)
            for i, shift in enumerate(shifts[rows].tolist()):
                crop = tuple(slice(s, s + side) for s, side in zip(shift, size, strict=True))
                out[i] = large[(i, slice(None), *crop)]
            return out.to(device)

        return masks

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """RISE with ``n_masks`` masks; with ``"auto"``, with as many as the map needs."""
        return with_count(
            lambda count: self._attribute(x, spec, score, count, output_kind),
            self.n_masks,
            self.max_masks,
        )

    def _attribute(
        self, x: Tensor, spec: TargetSpec, score: str, count: int, output_kind: str | None
    ) -> Attribution:
        """Score every masked input, then average the masks weighted by their scores.

        The weighted sum is kept in two halves of the masks, whose maps give the split-half
        agreement in ``info["convergence"]`` (:mod:`salience.methods.convergence`).
        """
        _check_spatial(x, self.name)
        outputs = self.adapter.forward(x, chunk_size=PERTURBATION_CHUNK_SIZE)
        selection = resolve(spec, outputs)
        scores = target_scores(outputs, selection, score)
        kind = weight_kind(outputs, selection, score, self.softmax, output_kind)
        spatial = tuple(x.shape[2:])
        masks = self.mask_maker(spatial, x.device, count)
        maps, halves = [], []
        split = half_of(count)
        for n in range(x.shape[0]):
            own = selection.take(slice(n, n + 1))
            weights = masked_scores(
                self.adapter,
                x[n : n + 1],
                masks,
                count,
                own,
                kind,
                chunk_size=self.chunk_size,
                progress=self.progress,
                description=self.name,
            )
            total = torch.zeros(2, selection.k, math.prod(spatial), dtype=torch.float64)
            for part, (start, stop) in enumerate(((0, split), (split, count))):
                for rows in chunks(stop - start, WEIGHTING_CHUNK_SIZE):
                    rows = slice(rows.start + start, rows.stop + start)
                    chunk = masks(rows).flatten(1).cpu().to(weights.dtype)  # a float64 model too
                    total[part] += (weights[rows].T.cpu() @ chunk).double()
            saliency = total.sum(dim=0) / (count * self.keep)
            maps.append(saliency.reshape(selection.k, *spatial).to(x))
            halves.append(total.reshape(2, selection.k, *spatial))
        first, second = (None, None) if split == 0 else torch.stack(halves, dim=1).unbind(0)
        info = {
            "weights": kind,
            "masks": count,
            "convergence": split_half_info(first, second, count, AGREEMENT_THRESHOLD),
        }
        return Attribution(torch.stack(maps), selection, scores, info, outputs)
