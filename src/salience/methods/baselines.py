"""Reference inputs shared by the methods that compare an input with a baseline.

Integrated Gradients integrates from one; occlusion fills the occluded window with one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from salience.errors import InvalidInputError
from salience.methods.options import Option
from salience.postprocess import gaussian_blur

BASELINES: tuple[str, ...] = ("zeros", "mean", "blur")
BaselineLike = str | float | Tensor
BASELINE = Option(
    "baseline",
    str,
    "zeros",
    "reference input: zeros, the image's per-channel mean or a blurred copy",
    flag="baseline",
    choices=BASELINES,
    more="a number or a tensor",
)


def check_baseline(baseline: BaselineLike) -> None:
    """Raise a ValueError for a baseline name that does not exist."""
    if isinstance(baseline, str) and baseline not in BASELINES:
        raise InvalidInputError(
            f"unknown baseline {baseline!r}; choose {', '.join(BASELINES)}, a number or a tensor"
        )


def baseline_like(x: Tensor, baseline: BaselineLike, *, blur_sigma: float | None = None) -> Tensor:
    """The baseline batch for ``x``.

    Parameters
    ----------
    x : Tensor
        The inputs ``(N, ...)``.
    baseline : {"zeros", "mean", "blur"}, float or Tensor
        Zeros; each sample's per-channel mean (images) or mean (vectors); a Gaussian-blurred copy
        (blurred along the spatial axes only: each channel of a ``(N, C, L)`` signal along
        time, a ``(N, C, D, H, W)`` volume in 3-D); a constant; or a tensor broadcastable to ``x``.
    blur_sigma : float, optional
        σ in pixels of the blur (default: a tenth of the shortest spatial side).
    """
    check_baseline(baseline)
    if isinstance(baseline, Tensor):
        return baseline.to(device=x.device, dtype=x.dtype).expand_as(x).clone()
    if baseline == "zeros":
        return torch.zeros_like(x)
    if baseline == "mean":
        dims = tuple(range(2, x.ndim)) if x.ndim > 2 else (1,)
        return x.mean(dim=dims, keepdim=True).expand_as(x).clone()
    if baseline == "blur":
        if not 3 <= x.ndim <= 5:
            raise InvalidInputError(
                f"a blurred baseline needs inputs with 1 to 3 spatial axes (N, C, *S), got shape "
                f"{tuple(x.shape)}; use baseline='zeros' or 'mean'"
            )
        spatial = x.shape[2:]
        return gaussian_blur(x, blur_sigma or min(spatial) / 10, dims=len(spatial))
    return torch.full_like(x, float(baseline))
