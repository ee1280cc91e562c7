"""Pure functions that turn a raw map into a displayable one; none of them changes its input.

Maps are tensors with the spatial dimensions last: ``(..., H, W)``, or ``(..., C, H, W)`` before
channel reduction.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from salience.errors import InvalidInputError

Reduction = Literal["abs_max", "abs_sum", "l2", "sum", "max"]
REDUCTIONS: tuple[str, ...] = ("abs_max", "abs_sum", "l2", "sum", "max")


def check_reduction(how: str) -> str:
    """``how`` if it names a channel reduction; else a ValueError listing them."""
    if how not in REDUCTIONS:
        raise InvalidInputError(
            f"unknown channel reduction {how!r}; choose one of {', '.join(REDUCTIONS)}"
        )
    return how


def check_percentile(percentile: float) -> float:
    """``percentile`` if it is in (0, 100]; else a ValueError with the range."""
    if not 0 < percentile <= 100:
        raise InvalidInputError(f"percentile must be in (0, 100], got {percentile}")
    return percentile


def check_sigma(sigma: float) -> float:
    """``sigma`` if it is a finite number of pixels >= 0; else a ValueError with the range."""
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise InvalidInputError(f"sigma must be a finite number of pixels >= 0, got {sigma}")
    return sigma


def reduce_channels(saliency: Tensor, how: str = "abs_max", *, dim: int = -3) -> Tensor:
    """Collapse the channel dimension of an attribution.

    Parameters
    ----------
    saliency : Tensor
        ``(..., C, H, W)``.
    how : {"abs_max", "abs_sum", "l2", "sum", "max"}
        ``abs_max`` is Simonyan et al.'s max of |gradient| over channels; ``sum`` keeps the sign.
    dim : int
        The channel dimension.
    """
    check_reduction(how)
    if how == "abs_max":
        return saliency.abs().amax(dim=dim)
    if how == "abs_sum":
        return saliency.abs().sum(dim=dim)
    if how == "l2":
        return saliency.square().sum(dim=dim).sqrt()
    if how == "sum":
        return saliency.sum(dim=dim)
    return saliency.amax(dim=dim)  # "max"


def clip_percentile(saliency: Tensor, percentile: float = 99.0, *, dims: int = 2) -> Tensor:
    """Clip magnitudes above the given percentile of ``|map|`` (sanity-checks convention: 99).

    The percentile is taken over the last ``dims`` (spatial) dimensions of each map: 2 for
    images, 3 for volumes, 1 for signals; the sign is kept.
    """
    check_percentile(percentile)
    flat = saliency.abs().flatten(-dims)
    exact = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    bound = torch.quantile(exact, percentile / 100.0, dim=-1).to(saliency.dtype)
    bound = bound.reshape(*bound.shape, *([1] * dims))
    return saliency.clamp(min=-bound, max=bound)


def normalize(
    saliency: Tensor, *, signed: bool = False, eps: float = 1e-12, dims: int = 2
) -> Tensor:
    """Scale each map (last ``dims`` dimensions) to ``[0, 1]``, or to ``[-1, 1]`` by max |map|
    if signed.

    An all-zero or constant map becomes all zeros (never NaN).
    """
    flat = saliency.flatten(-dims)
    spread = (..., *([None] * dims))
    if signed:
        scale = flat.abs().amax(dim=-1)[spread]
        return torch.where(scale > eps, saliency / scale.clamp_min(eps), torch.zeros_like(saliency))
    low = flat.amin(dim=-1)[spread]
    span = flat.amax(dim=-1)[spread] - low
    return torch.where(
        span > eps, (saliency - low) / span.clamp_min(eps), torch.zeros_like(saliency)
    )


def gaussian_kernel1d(
    sigma: float, *, truncate: float = 4.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """A normalized 1-D Gaussian kernel of radius ``round(truncate * sigma)``, as SciPy's."""
    radius = max(int(truncate * sigma + 0.5), 1)
    positions = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (positions / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(
    saliency: Tensor, sigma: float, *, truncate: float = 4.0, dims: int = 2
) -> Tensor:
    """Gaussian smoothing over the last ``dims`` dimensions with σ in pixels (reflect at the
    borders): 2 for images, 3 for volumes, 1 for signals (each channel along time).

    Equal to ``scipy.ndimage.gaussian_filter(..., sigma, mode="reflect", truncate=truncate)``
    applied to each map separately.
    """
    if check_sigma(sigma) == 0:
        return saliency.clone()
    kernel = gaussian_kernel1d(sigma, truncate=truncate, dtype=saliency.dtype).to(saliency.device)
    radius = kernel.numel() // 2
    spatial = tuple(saliency.shape[saliency.ndim - dims :])
    images = saliency.reshape(-1, 1, *spatial)
    convolve = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    for axis, size in enumerate(spatial, start=2):
        images = _reflect_pad(images, radius, axis, size)
        shape = [1] * (dims + 2)
        shape[axis] = -1
        images = convolve(images, kernel.reshape(shape))
    return images.reshape(saliency.shape)


def _reflect_pad(images: Tensor, radius: int, axis: int, size: int) -> Tensor:
    """SciPy's "reflect" (half-sample symmetric) padding along one axis, for any radius."""
    index = torch.arange(-radius, size + radius, device=images.device)
    period = 2 * size
    folded = torch.remainder(index, period)
    folded = torch.where(folded >= size, period - 1 - folded, folded)
    return images.index_select(axis, folded)


LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
"""Linear interpolation along each spatial axis, by the number of axes."""


def upsample(
    saliency: Tensor,
    size: tuple[int, ...],
    *,
    mode: str | None = None,
    antialias: bool = False,
) -> Tensor:
    """Resize maps ``(..., *s)`` to ``size``, pixel (voxel, sample) centres aligned.

    Parameters
    ----------
    saliency : Tensor
        Maps with the spatial dimensions last; float dtypes are kept, others become float32.
    size : tuple of int
        Target ``(L,)``, ``(H, W)`` or ``(D, H, W)``: the last ``len(size)`` dimensions resize.
    mode : str, optional
        Linear along each axis by default (``linear``, ``bilinear`` or ``trilinear`` by the
        rank of ``size``); ``bicubic`` (2-D) or ``nearest``.
    antialias : bool
        Low-pass filter first when shrinking (bilinear/bicubic only).
    """
    rank = len(size)
    if rank not in LINEAR_MODES:
        raise InvalidInputError(f"maps resize along 1 to 3 axes, not {rank}: size {size}")
    mode = mode or LINEAR_MODES[rank]
    lead, spatial = saliency.shape[:-rank], saliency.shape[saliency.ndim - rank :]
    images = saliency.reshape(-1, 1, *spatial)
    if not images.is_floating_point():
        images = images.float()
    kwargs = {"align_corners": False} if mode in (*LINEAR_MODES.values(), "bicubic") else {}
    if antialias:
        kwargs["antialias"] = True
    resized = F.interpolate(images, size=size, mode=mode, **kwargs)
    return resized.reshape(*lead, *size)


def to_display(
    saliency: Tensor,
    *,
    reduce: str = "abs_max",
    percentile: float | None = 99.0,
    smooth: float = 0.0,
    size: tuple[int, int] | None = None,
    signed: bool = False,
) -> Tensor:
    """The usual chain for an image attribution: reduce channels, smooth, clip, resize, normalize.

    Parameters
    ----------
    saliency : Tensor
        ``(C, H, W)`` or ``(H, W)`` map.
    reduce : str
        Channel reduction (ignored for 2-D maps); ``sum`` keeps the sign.
    percentile : float or None
        Clip at this percentile of ``|map|``; None to skip.
    smooth : float
        Gaussian σ in pixels of the map; 0 to skip.
    size : tuple of int, optional
        Resize the map to this (H, W).
    signed : bool
        Normalize to ``[-1, 1]`` keeping the sign, instead of ``[0, 1]``.
    """
    values = display_values(
        saliency, reduce=reduce, percentile=percentile, smooth=smooth, size=size
    )
    return normalize(values, signed=signed)


def display_values(
    saliency: Tensor,
    *,
    reduce: str = "abs_max",
    percentile: float | None = 99.0,
    smooth: float = 0.0,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """:func:`to_display` without the normalization: the map in its own units (for colorbars)."""
    result = reduce_channels(saliency, reduce) if saliency.ndim == 3 else saliency
    if smooth > 0:
        result = gaussian_blur(result, smooth)
    if percentile is not None:
        result = clip_percentile(result, percentile)
    if size is not None and tuple(result.shape[-2:]) != tuple(size):
        result = upsample(result, size)
    return result
