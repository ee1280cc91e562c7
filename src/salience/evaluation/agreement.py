"""Agreement between methods: do two saliency maps of one input point at the same pixels?

Each map is brought to the sanity checks' normalized absolute form
(:func:`salience.evaluation.similarity.comparable`) at a common size; every pair gets the
Spearman rank correlation over all pixels and the intersection over union of their top-k% pixels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from salience.errors import InvalidInputError
from salience.evaluation.report import write_report
from salience.evaluation.similarity import comparable, largest_size, spearman, top_k_iou
from salience.fileio import write_json_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_TOP_FRACTION = 0.1


@dataclass(frozen=True)
class Agreement:
    """Pairwise agreement of several methods' maps of one input.

    Attributes
    ----------
    methods : tuple of str
        The methods, in the order of the matrices' rows and columns.
    spearman : numpy.ndarray
        ``(M, M)`` Spearman rank correlation of the normalized absolute maps (1 on the diagonal).
    iou : numpy.ndarray
        ``(M, M)`` intersection over union of the top ``top_fraction`` of pixels.
    top_fraction : float
        The fraction of pixels in each map's top set.
    size : tuple of int
        The ``(H, W)`` the maps were compared at.
    """

    methods: tuple[str, ...]
    spearman: np.ndarray
    iou: np.ndarray
    top_fraction: float
    size: tuple[int, int]

    def pairs(self) -> list[dict[str, Any]]:
        """One record per pair of methods: ``a``, ``b``, ``spearman``, ``iou``."""
        return [
            {
                "a": self.methods[i],
                "b": self.methods[j],
                "spearman": float(self.spearman[i, j]),
                "iou": float(self.iou[i, j]),
            }
            for i, j in combinations(range(len(self.methods)), 2)
        ]

    def rows(self) -> list[dict[str, Any]]:
        """The table: one record per pair of methods (:meth:`pairs`)."""
        return self.pairs()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: methods, both matrices, the pairs and the settings."""
        return {
            "methods": list(self.methods),
            "top_fraction": self.top_fraction,
            "size": list(self.size),
            "spearman": self.spearman.tolist(),
            "iou": self.iou.tolist(),
            "pairs": self.pairs(),
        }

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON, atomically."""
        return write_json_atomic(path, self.to_dict())

    def save(
        self, folder: str | os.PathLike[str], *, name: str = "agreement", figures: bool = True
    ) -> list[Path]:
        """Write ``<name>.json`` (:meth:`to_dict`) and, with ``figures``, the matrices
        ``<name>.png``; both atomically."""
        return write_report(
            Path(folder) / name,
            self.to_dict(),
            figures={".png": lambda: agreement_figure(self)} if figures else None,
        )


def agreement(
    maps: Mapping[str, Tensor],
    *,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    size: tuple[int, int] | None = None,
) -> Agreement:
    """The pairwise agreement of maps of ONE input by different methods.

    Parameters
    ----------
    maps : mapping of str to Tensor
        Method name → map ``(C, h, w)`` or ``(h, w)`` at its native resolution, e.g.
        ``{name: e.map(0, 0) for name, e in salience.explain_all(...).items()}``.
    top_fraction : float
        The share of pixels in each map's top set, for the intersection over union.
    size : tuple of int, optional
        Compare at this ``(H, W)``; default the largest map's size (the input's, for gradient
        methods).
    """
    if len(maps) < 2:
        raise InvalidInputError(f"agreement needs maps of at least 2 methods, got {len(maps)}")
    if not 0.0 < top_fraction <= 1.0:
        raise InvalidInputError(f"top_fraction must be in (0, 1], got {top_fraction}")
    names = tuple(maps)
    size = size or largest_size(list(maps.values()))
    shown = [comparable(maps[name], size, signed=False) for name in names]
    count = len(names)
    rank = np.eye(count)
    overlap = np.eye(count)
    for i, j in combinations(range(count), 2):
        rank[i, j] = rank[j, i] = spearman(shown[i], shown[j])
        overlap[i, j] = overlap[j, i] = top_k_iou(shown[i], shown[j], top_fraction)
    return Agreement(names, rank, overlap, top_fraction, (int(size[0]), int(size[1])))


def agreement_figure(result: Agreement) -> Figure:
    """The two pairwise matrices side by side, values written in the cells."""
    from salience.viz import new_figure

    count = len(result.methods)
    side = 1.0 + 0.6 * count
    figure = new_figure(2 * side + 1.0, side, "agreement figures")
    axes = figure.subplots(1, 2, squeeze=False)[0]
    titles = ("Spearman rank correlation", f"top-{result.top_fraction:.0%} IoU")
    for axis, matrix, title, low in zip(
        axes, (result.spearman, result.iou), titles, (-1.0, 0.0), strict=True
    ):
        image = axis.imshow(matrix, cmap="viridis", vmin=low, vmax=1.0)
        for i in range(count):
            for j in range(count):
                color = "black" if matrix[i, j] > (low + 1.0) / 2 else "white"
                text = f"{matrix[i, j]:.2f}"
                axis.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
        axis.set_xticks(range(count), result.methods, rotation=45, ha="right", fontsize=7)
        axis.set_yticks(range(count), result.methods, fontsize=7)
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, shrink=0.8)
    return figure
