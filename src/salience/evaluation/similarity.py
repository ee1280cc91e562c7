"""How alike two saliency maps are: the measures of the sanity-check paper, and top-k overlap.

Adebayo et al. (2018, "Sanity Checks for Saliency Maps") compare maps after one normalization:
channels summed, magnitudes clipped at the 99th percentile, then scaled to ``[0, 1]`` (absolute
maps) or ``[-1, 1]`` (signed maps). On those they report the Spearman rank correlation with and
without the absolute value, SSIM, and the rank correlation of HOG features. Maps at a layer's
resolution (CAMs) are upsampled to the compared size first, so every map is compared pixel for
pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from salience.errors import InvalidInputError
from salience.postprocess import to_display, upsample

SIMILARITY_METRICS: tuple[str, ...] = ("spearman_abs", "spearman_signed", "ssim", "hog")
#: How the figures name each measure.
METRIC_TITLES = {
    "spearman_abs": "rank correlation (absolute)",
    "spearman_signed": "rank correlation (signed)",
    "ssim": "SSIM",
    "hog": "HOG similarity",
}
"""The measures reported by :func:`similarities`, in the paper's order."""

PERCENTILE = 99.0
"""Magnitudes above this percentile are clipped before comparing (the paper's choice)."""
MIN_COMPARED_SIDE = 32
"""Smaller maps are compared upsampled (SSIM's Gaussian window is 11 pixels wide)."""


def comparable(saliency: Tensor, size: tuple[int, int], *, signed: bool) -> np.ndarray:
    """The paper's normalized form of one map, as float64 ``(H, W)``.

    Parameters
    ----------
    saliency : Tensor
        ``(C, h, w)`` or ``(h, w)``: a map at its native resolution.
    size : tuple of int
        The ``(H, W)`` the map is compared at.
    signed : bool
        Sum channels keeping the sign and scale to ``[-1, 1]``; else sum ``|map|`` over channels
        and scale to ``[0, 1]``.
    """
    if saliency.ndim not in (2, 3):
        raise InvalidInputError(
            f"expected a map (C, H, W) or (H, W), got shape {tuple(saliency.shape)}"
        )
    shown = to_display(
        saliency.detach().cpu().double(),
        reduce="sum" if signed else "abs_sum",
        percentile=PERCENTILE,
        size=size,
        signed=signed,
    )
    if not signed:  # the channel sum of |map| is non-negative, but upsampling may undershoot
        shown = shown.clamp_min(0.0)
    return shown.numpy()


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.ptp(values) == 0.0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of equal shape (ties get their average rank).

    A constant map has no ranking: two constant maps count as equal (1.0), a constant and a
    varying map as unrelated (0.0), instead of the undefined NaN.
    """
    from scipy.stats import spearmanr

    a, b = _same_shape(a, b)
    constant = _is_constant(a) + _is_constant(b)
    if constant:
        return 1.0 if constant == 2 else 0.0
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0) -> float:
    """Structural similarity with Gaussian weights (σ 1.5), as in Wang et al. 2004.

    ``a`` and ``b`` are maps scaled to ``[0, 1]`` (so ``data_range`` is 1).
    """
    from skimage.metrics import structural_similarity

    a, b = _same_shape(a, b)
    if min(a.shape) < 11:
        raise InvalidInputError(
            f"SSIM with a Gaussian window of σ 1.5 needs maps of at least 11×11 pixels, got "
            f"{a.shape}; compare at comparison_size(...)"
        )
    value = structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return float(value)


def hog_features(saliency: np.ndarray) -> np.ndarray:
    """Histogram-of-oriented-gradients features of a map (skimage's defaults, cells of 1/16)."""
    from skimage.feature import hog

    cell = max(2, min(saliency.shape) // 16)
    return hog(
        saliency,
        orientations=9,
        pixels_per_cell=(cell, cell),
        cells_per_block=(2, 2),
        feature_vector=True,
    )


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of the HOG features of two maps."""
    a, b = _same_shape(a, b)
    return spearman(hog_features(a), hog_features(b))


def top_k_iou(a: np.ndarray, b: np.ndarray, fraction: float = 0.1) -> float:
    """Intersection over union of the top ``fraction`` of pixels of two maps.

    Each map's top set holds its ``ceil(fraction · pixels)`` largest values (ties broken by
    position, so both sets have the same size).
    """
    if not 0.0 < fraction <= 1.0:
        raise InvalidInputError(f"the top fraction must be in (0, 1], got {fraction}")
    a, b = _same_shape(a, b)
    count = int(np.ceil(fraction * a.size))
    top_a = np.zeros(a.size, dtype=bool)
    top_b = np.zeros(b.size, dtype=bool)
    top_a[np.argsort(-a.ravel(), kind="stable")[:count]] = True
    top_b[np.argsort(-b.ravel(), kind="stable")[:count]] = True
    return float((top_a & top_b).sum() / (top_a | top_b).sum())


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InvalidInputError(f"maps to compare must have one shape, got {a.shape} and {b.shape}")
    return a, b


@dataclass(frozen=True)
class ComparedMap:
    """One map in the forms the measures read, computed once however often it is compared.

    Attributes
    ----------
    absolute : numpy.ndarray
        :func:`comparable` form of ``|map|``, in [0, 1].
    signed : numpy.ndarray
        :func:`comparable` form keeping the sign, in [-1, 1].
    hog : numpy.ndarray
        :func:`hog_features` of ``absolute``.
    """

    absolute: np.ndarray
    signed: np.ndarray
    hog: np.ndarray


def compared_map(saliency: Tensor, size: tuple[int, int]) -> ComparedMap:
    """Prepare a map ``(C, h, w)`` or ``(h, w)`` for comparisons at ``size``."""
    absolute = comparable(saliency, size, signed=False)
    return ComparedMap(absolute, comparable(saliency, size, signed=True), hog_features(absolute))


def compare(reference: ComparedMap, other: ComparedMap) -> dict[str, float]:
    """Every measure of :data:`SIMILARITY_METRICS` between two prepared maps."""
    measures: dict[str, Callable[[], float]] = {
        "spearman_abs": lambda: spearman(reference.absolute, other.absolute),
        "spearman_signed": lambda: spearman(reference.signed, other.signed),
        "ssim": lambda: ssim(reference.absolute, other.absolute),
        "hog": lambda: spearman(reference.hog, other.hog),
    }
    return {name: measures[name]() for name in SIMILARITY_METRICS}


def similarities(reference: Tensor, other: Tensor, size: tuple[int, int]) -> dict[str, float]:
    """Every measure of :data:`SIMILARITY_METRICS` between two maps.

    Parameters
    ----------
    reference, other : Tensor
        Maps ``(C, h, w)`` or ``(h, w)`` at their native resolutions.
    size : tuple of int
        The ``(H, W)`` they are compared at (the input's, usually).
    """
    return compare(compared_map(reference, size), compared_map(other, size))


def slice_mosaic(saliency: Tensor, spatial: tuple[int, int, int]) -> Tensor:
    """A volume's map ``(C, d, h, w)`` or ``(d, h, w)`` as one 2-D picture of its slices.

    The map is upsampled trilinearly to the volume's ``(D, H, W)`` and its ``D`` slices are laid
    out row by row on a grid of ``D / k`` rows and ``k`` columns, ``k`` the largest divisor of
    ``D`` not above its square root; channels stay. Spearman's correlation of two mosaics is
    that of the voxels; SSIM and HOG compare the slices (their windows straddle tile borders).
    """
    depth, height, width = spatial
    maps = saliency if saliency.ndim == 4 else saliency.unsqueeze(0)
    if tuple(maps.shape[1:]) != tuple(spatial):
        maps = upsample(maps.double(), tuple(spatial))
    columns = max(k for k in range(1, math.isqrt(depth) + 1) if depth % k == 0)
    rows = depth // columns
    tiles = maps.reshape(maps.shape[0], rows, columns, height, width).permute(0, 1, 3, 2, 4)
    mosaic = tiles.reshape(maps.shape[0], rows * height, columns * width)
    return mosaic if saliency.ndim == 4 else mosaic[0]


def comparison_size(size: tuple[int, int], minimum: int = MIN_COMPARED_SIDE) -> tuple[int, int]:
    """The size maps of inputs of ``size`` are compared at: scaled up by a whole factor until
    the shorter side is at least ``minimum``."""
    factor = max(1, math.ceil(minimum / max(1, min(size))))
    return int(size[0]) * factor, int(size[1]) * factor


def map_size(saliency: Tensor) -> tuple[int, int]:
    """The spatial size ``(H, W)`` of a map ``(C, H, W)`` or ``(H, W)``."""
    return int(saliency.shape[-2]), int(saliency.shape[-1])


def largest_size(maps: list[Tensor]) -> tuple[int, int]:
    """The largest spatial size among maps: the size at which they are compared."""
    return max((map_size(m) for m in maps), key=lambda hw: hw[0] * hw[1])


__all__ = [
    "METRIC_TITLES",
    "PERCENTILE",
    "SIMILARITY_METRICS",
    "ComparedMap",
    "comparable",
    "compare",
    "compared_map",
    "comparison_size",
    "hog_features",
    "hog_similarity",
    "largest_size",
    "similarities",
    "slice_mosaic",
    "spearman",
    "ssim",
    "top_k_iou",
]
