"""Agreement between methods: do two saliency maps of one input point at the same pixels?

Each map is brought to the sanity checks' normalized absolute form
(:func:`salience.evaluation.similarity.comparable`) at a common size; every pair gets the
Spearman rank correlation over all pixels and the intersection over union of their top-k% pixels.
Over many inputs, :class:`AgreementSummary` gives the distribution of both per pair of methods:
how often they agree, and how often they disagree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from salience.errors import InvalidInputError
from salience.evaluation.report import write_report
from salience.evaluation.similarity import comparable, largest_size, spearman, top_k_iou
from salience.fileio import write_csv_atomic, write_json_atomic

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


AGREE_AT = 0.5
"""A pair agrees on an image when the rank correlation of their maps is at least this."""
DISAGREE_BELOW = 0.1
"""A pair disagrees on an image when the rank correlation is below this: their maps are no more
alike than maps of unrelated pixels."""
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class AgreementSummary:
    """How often methods agree over many inputs: the pairwise agreement of each input.

    Attributes
    ----------
    labels : tuple of str
        The inputs' names, in the order of ``results``.
    results : tuple of Agreement
        Each input's :class:`Agreement`, all of the same methods.
    """

    labels: tuple[str, ...]
    results: tuple[Agreement, ...]

    @property
    def methods(self) -> tuple[str, ...]:
        """The compared methods."""
        return self.results[0].methods

    @property
    def top_fraction(self) -> float:
        """The fraction of pixels in each map's top set."""
        return self.results[0].top_fraction

    def pair_names(self) -> list[tuple[str, str]]:
        """Every pair of methods, in the order of :meth:`Agreement.pairs`."""
        return [(pair["a"], pair["b"]) for pair in self.results[0].pairs()]

    def values(self, measure: str) -> np.ndarray:
        """``(inputs, pairs)`` of ``"spearman"`` or ``"iou"``."""
        return np.array([[pair[measure] for pair in result.pairs()] for result in self.results])

    def image_rows(self) -> list[dict[str, Any]]:
        """One record per input and pair: ``image``, ``a``, ``b``, ``spearman``, ``iou``."""
        return [
            {"image": label, **pair}
            for label, result in zip(self.labels, self.results, strict=True)
            for pair in result.pairs()
        ]

    def rows(self) -> list[dict[str, Any]]:
        """The table, one record per pair: the distribution of its rank correlation and IoU over
        the inputs (mean, median, min, max) and how often it agrees and disagrees."""
        rank, overlap = self.values("spearman"), self.values("iou")
        records = []
        for p, (a, b) in enumerate(self.pair_names()):
            record: dict[str, Any] = {"a": a, "b": b, "images": len(self.results)}
            for measure, column in (("spearman", rank[:, p]), ("iou", overlap[:, p])):
                record[f"{measure}_mean"] = float(column.mean())
                record[f"{measure}_median"] = float(np.median(column))
                record[f"{measure}_min"] = float(column.min())
                record[f"{measure}_max"] = float(column.max())
            record["agree"] = float((rank[:, p] >= AGREE_AT).mean())
            record["disagree"] = float((rank[:, p] < DISAGREE_BELOW).mean())
            records.append(record)
        return records

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: the settings, the pairs' table and every input's pairs."""
        return {
            "methods": list(self.methods),
            "top_fraction": self.top_fraction,
            "agree_at": AGREE_AT,
            "disagree_below": DISAGREE_BELOW,
            "pairs": self.rows(),
            "images": self.image_rows(),
        }

    def save(
        self, folder: str | os.PathLike[str], *, name: str = "agreement_summary"
    ) -> list[Path]:
        """Write ``<name>.csv`` (:meth:`rows`), ``<name>_images.csv`` (:meth:`image_rows`),
        ``<name>.json`` and the histograms ``<name>.png``, each atomically."""
        stem = Path(folder) / name
        written = write_report(
            stem,
            self.to_dict(),
            rows=self.rows(),
            figures={".png": lambda: agreement_summary_figure(self)},
        )
        images = write_csv_atomic(stem.with_name(f"{name}_images.csv"), self.image_rows())
        return [*written, images]


def agreement_summary(labels: Sequence[str], results: Sequence[Agreement]) -> AgreementSummary:
    """The agreement of the same methods over many inputs (:class:`AgreementSummary`).

    Raises
    ------
    InvalidInputError
        When there is no result, the labels do not match them, or they compare other methods.
    """
    if not results or len(labels) != len(results):
        raise InvalidInputError(
            f"an agreement summary needs one label per result, got {len(labels)} labels and "
            f"{len(results)} results"
        )
    methods = results[0].methods
    if any(result.methods != methods for result in results):
        raise InvalidInputError("every input of an agreement summary must compare the same methods")
    return AgreementSummary(tuple(labels), tuple(results))


def agreement_summary_figure(summary: AgreementSummary) -> Figure:
    """One row per pair of methods: the histogram of its rank correlation over the inputs and
    that of its top-k% IoU, each with its mean marked."""
    from salience.viz import new_figure

    pairs = summary.pair_names()
    figure = new_figure(8.0, 0.6 + 2.0 * len(pairs), "agreement figures")
    axes = figure.subplots(len(pairs), 2, squeeze=False)
    measures = (
        ("spearman", "Spearman rank correlation", (-1.0, 1.0)),
        ("iou", f"top-{summary.top_fraction:.0%} IoU", (0.0, 1.0)),
    )
    for column, (measure, title, limits) in enumerate(measures):
        values = summary.values(measure)
        for p, (a, b) in enumerate(pairs):
            axis = axes[p, column]
            axis.hist(values[:, p], bins=HISTOGRAM_BINS, range=limits, color="0.45")
            axis.axvline(float(values[:, p].mean()), color="tab:red", linewidth=1.0)
            axis.set_xlim(*limits)
            axis.set_title(f"{a} vs {b}: {title}", fontsize=8)
            axis.set_ylabel("images", fontsize=7)
            axis.tick_params(labelsize=7)
    figure.suptitle(f"agreement over {len(summary.results)} images (red: the mean)", fontsize=9)
    return figure
