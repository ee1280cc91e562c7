"""Figures of the evaluation results: sanity-check maps and curves, agreement matrices.

Every function returns a matplotlib ``Figure`` drawn without pyplot (thread-safe); write it with
:func:`salience.viz.save_figure`. A result that writes its own figures (``save()``) draws them
in its own module, so that results never import this one: the import goes one way, from the
figures to the results. This module gathers them and draws the agreement matrices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from salience.evaluation.agreement import Agreement
from salience.evaluation.data_randomization import data_randomization_figure
from salience.evaluation.faithfulness import faithfulness_figure
from salience.evaluation.randomization import CELL_INCHES, sanity_curves, sanity_figure
from salience.evaluation.similarity import METRIC_TITLES
from salience.viz import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def agreement_figure(result: Agreement) -> Figure:
    """The two pairwise matrices side by side, values written in the cells."""
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
                axis.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                          color=color)  # fmt: skip
        axis.set_xticks(range(count), result.methods, rotation=45, ha="right", fontsize=7)
        axis.set_yticks(range(count), result.methods, fontsize=7)
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, shrink=0.8)
    return figure


__all__ = [
    "CELL_INCHES",
    "METRIC_TITLES",
    "agreement_figure",
    "data_randomization_figure",
    "faithfulness_figure",
    "sanity_curves",
    "sanity_figure",
]
