"""Methods that need only the model's outputs: occlusion and RISE. They explain black boxes too.

Both run through the perturbation engine (:func:`salience.methods.masking.masked_scores`): masks
are made chunk by chunk, so memory stays bounded however many there are, and the same seed gives
the same map whatever the chunk size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
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
    more="a pair of them",
    request_max=256,
)
STRIDE = Option(
    "stride",
    int,
    8,
    "occlusion stride (pixels)",
    flag="stride",
    low=1,
    more="a pair of them",
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


def _pair(value: int | tuple[int, int], option: Option) -> tuple[int, int]:
    """An int option that may also be given as a pair (height, width), each checked by it."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(option.problem(v) is not None for v in pair):
        raise InvalidInputError(
            f"{option.name} must be a positive int or a pair of them "
            f"({option.bounds_text()}), got {value!r}"
        )
    return int(pair[0]), int(pair[1])


def _check_images(x: Tensor, method: str) -> None:
    if x.ndim != 4:
        raise InvalidInputError(
            f"{method} perturbs images (N, C, H, W); got shape {tuple(x.shape)}"
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
    """Occlusion: the score drop when a sliding window of the image is replaced by a baseline.

    Each pixel gets the mean drop over the windows that covered it (as Captum's ``Occlusion``).
    The window covers all channels; windows are placed every ``stride`` pixels, plus one flush
    with the right and bottom edges when the stride does not reach them, so every pixel counts.

    Parameters
    ----------
    model : torch.nn.Module, adapter or path of an ONNX file
        The model to explain.
    window : int or (int, int)
        Window height and width in pixels.
    stride : int or (int, int)
        Step between windows.
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
        window: int | tuple[int, int] = WINDOW.default,
        stride: int | tuple[int, int] = STRIDE.default,
        baseline: BaselineLike = BASELINE.default,
        chunk_size: int | None = CHUNK_SIZE.default,
        progress: bool = PROGRESS.default,
    ) -> None:
        super().__init__(model)
        self.window = _pair(window, WINDOW)
        self.stride = _pair(stride, STRIDE)
        check_baseline(BASELINE.check(baseline))
        self.baseline = baseline
        self.chunk_size = CHUNK_SIZE.check(chunk_size) or PERTURBATION_CHUNK_SIZE
        self.progress = PROGRESS.check(progress)

    def params(self) -> dict[str, Any]:
        """Configuration."""
        baseline = self.baseline if not isinstance(self.baseline, Tensor) else "tensor"
        return {"window": list(self.window), "stride": list(self.stride), "baseline": baseline}

    def attribute(self, x: Tensor, spec: TargetSpec, score: str) -> Attribution:
        """Slide the window, score every occluded image, average the drops per pixel."""
        _check_images(x, self.name)
        height, width = x.shape[-2:]
        rows = window_starts(height, self.window[0], self.stride[0])
        cols = window_starts(width, self.window[1], self.stride[1])
        corners = [(r, c) for r in rows for c in cols]
        selection, scores, outputs = self.unperturbed_pass(x, spec, score)
        substrate = baseline_like(x, self.baseline)
        wh, ww = self.window

        def occluding(chosen: slice) -> Tensor:
            masks = torch.ones(chosen.stop - chosen.start, 1, height, width, device=x.device)
            for i, (r, c) in enumerate(corners[chosen]):
                masks[i, :, r : r + wh, c : c + ww] = 0
            return masks

        coverage = torch.zeros(height, width, dtype=torch.float64, device=x.device)
        for r, c in corners:
            coverage[r : r + wh, c : c + ww] += 1
        maps = []
        for n in range(x.shape[0]):
            own = selection.take(slice(n, n + 1))
            occluded = masked_scores(
                self.adapter,
                x[n : n + 1],
                occluding,
                len(corners),
                own,
                score,
                substrate=substrate[n : n + 1],
                chunk_size=self.chunk_size,
                progress=self.progress,
                description=self.name,
            )
            drops = (scores[n].double() - occluded.double()).T  # (K, windows)
            total = torch.zeros(selection.k, height, width, dtype=torch.float64, device=x.device)
            for i, (r, c) in enumerate(corners):
                total[:, r : r + wh, c : c + ww] += drops[:, i, None, None]
            maps.append((total / coverage).to(x.dtype))
        info = {"windows": len(corners)}
        return Attribution(torch.stack(maps), selection, scores, info, outputs)


@register_explainer("rise")
class RISE(Explainer):
    """RISE: the average of random masks, each weighted by the score of the image it keeps.

    ``n_masks`` binary grids of ``grid × grid`` cells, each cell kept with probability ``keep``,
    are upsampled bilinearly to ``(grid + 1) × cell`` pixels and cropped at a random shift within
    one cell (Petsiuk et al. 2018); the map is ``Σ score_i · M_i / (n_masks · keep)``. The score is
    the target's softmax probability for classifiers (as in the paper; ``softmax=False`` uses
    the explained score itself, as regression outputs and custom targets always do). Grids and
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
        self, size: tuple[int, int], device: torch.device, count: int | None = None
    ) -> Any:
        """``masks(rows)`` for inputs of ``size``: the same masks for every chunking.

        ``count`` masks are drawn (default: ``n_masks``).
        """
        count = self.n_masks if count is None else count
        height, width = size
        cell = (math.ceil(height / self.grid), math.ceil(width / self.grid))
        generator = make_generator(self.seed, torch.device("cpu"))
        shape = (count, 1, self.grid, self.grid)
        cells = (torch.rand(shape, generator=generator) < self.keep).float()
        shift_rows = torch.randint(0, cell[0], (count,), generator=generator)
        shift_cols = torch.randint(0, cell[1], (count,), generator=generator)
        upsampled = ((self.grid + 1) * cell[0], (self.grid + 1) * cell[1])

        def masks(rows: slice) -> Tensor:
            large = F.interpolate(cells[rows], size=upsampled, mode="bilinear", align_corners=False)
            out = torch.empty(large.shape[0], 1, height, width)
            for i, (r, c) in enumerate(
                zip(shift_rows[rows].tolist(), shift_cols[rows].tolist(), strict=True)
            ):
                out[i] = large[i, :, r : r + height, c : c + width]
            return out.to(device)

        return masks

    def attribute(self, x: Tensor, spec: TargetSpec, score: str) -> Attribution:
        """RISE with ``n_masks`` masks; with ``"auto"``, with as many as the map needs."""
        return with_count(
            lambda count: self._attribute(x, spec, score, count), self.n_masks, self.max_masks
        )

    def _attribute(self, x: Tensor, spec: TargetSpec, score: str, count: int) -> Attribution:
        """Score every masked image, then average the masks weighted by their scores.

        The weighted sum is kept in two halves of the masks, whose maps give the split-half
        agreement in ``info["convergence"]`` (:mod:`salience.methods.convergence`).
        """
        _check_images(x, self.name)
        outputs = self.adapter.forward(x, chunk_size=PERTURBATION_CHUNK_SIZE)
        selection = resolve(spec, outputs)
        scores = target_scores(outputs, selection, score)
        kind = weight_kind(outputs, selection, score, self.softmax)
        masks = self.mask_maker(tuple(x.shape[-2:]), x.device, count)
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
            total = torch.zeros(2, selection.k, x.shape[-2] * x.shape[-1], dtype=torch.float64)
            for part, (start, stop) in enumerate(((0, split), (split, count))):
                for rows in chunks(stop - start, WEIGHTING_CHUNK_SIZE):
                    rows = slice(rows.start + start, rows.stop + start)
                    chunk = masks(rows).flatten(1).cpu().to(weights.dtype)  # a float64 model too
                    total[part] += (weights[rows].T.cpu() @ chunk).double()
            saliency = total.sum(dim=0) / (count * self.keep)
            maps.append(saliency.reshape(selection.k, *x.shape[-2:]).to(x))
            halves.append(total.reshape(2, selection.k, *x.shape[-2:]))
        first, second = (None, None) if split == 0 else torch.stack(halves, dim=1).unbind(0)
        info = {
            "weights": kind,
            "masks": count,
            "convergence": split_half_info(first, second, count, AGREEMENT_THRESHOLD),
        }
        return Attribution(torch.stack(maps), selection, scores, info, outputs)
