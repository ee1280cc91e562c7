"""Figures of the evaluation results: sanity-check maps and curves, agreement matrices.

Every function returns a matplotlib ``Figure`` drawn without pyplot (thread-safe); write it with
:func:`salience.viz.save_figure`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from salience.viz import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from salience.evaluation.agreement import Agreement
    from salience.evaluation.data_randomization import DataRandomizationResult
    from salience.evaluation.faithfulness import FaithfulnessReport
    from salience.evaluation.randomization import SanityResult

CELL_INCHES = 1.3
METRIC_TITLES = {
    "spearman_abs": "rank correlation (absolute)",
    "spearman_signed": "rank correlation (signed)",
    "ssim": "SSIM",
    "hog": "HOG similarity",
}


def sanity_figure(result: SanityResult) -> Figure:
    """The paper's figure: one row per method, the trained model's map, then one column per step.

    Maps are the normalized absolute maps of the first sample, in gray (white = salient).
    """
    methods, columns = result.maps.shape[:2]
    labels = ["trained", *result.steps]
    figure = new_figure(CELL_INCHES * columns + 1.5, CELL_INCHES * methods + 1.2, "sanity figures")
    axes = figure.subplots(methods, columns, squeeze=False)
    for m, method in enumerate(result.methods):
        for c in range(columns):
            axis = axes[m, c]
            axis.imshow(result.maps[m, c], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if m == 0:
                axis.set_title(labels[c], fontsize=7, rotation=60, ha="left", loc="left")
        axes[m, 0].set_ylabel(method, fontsize=8)
    how = "cumulatively, top down" if result.mode == "cascading" else "one at a time"
    figure.suptitle(f"{result.mode} randomization: blocks re-initialized {how}", fontsize=10)
    return figure


def sanity_curves(result: SanityResult) -> Figure:
    """Each similarity measure against the randomized block, one line per method."""
    metrics = result.metrics
    figure = new_figure(4.2 * len(metrics), 3.6, "sanity curves")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    positions = np.arange(len(result.steps))
    for axis, metric in zip(axes, metrics, strict=True):
        means = result.mean(metric)
        for m, method in enumerate(result.methods):
            axis.plot(positions, means[m], marker="o", markersize=3, label=method)
        if metric == "spearman_abs":
            axis.axhline(result.threshold, color="gray", linestyle="--", linewidth=0.8)
        axis.set_title(METRIC_TITLES.get(metric, metric), fontsize=9)
        axis.set_xticks(positions, result.steps, rotation=90, fontsize=6)
        axis.set_ylim(min(-0.1, float(np.nanmin(means)) - 0.05), 1.05)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("similarity to the trained model's map")
    axes[-1].legend(fontsize=7, loc="best")
    figure.suptitle(f"{result.mode} randomization", fontsize=10)
    return figure


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


def data_randomization_figure(result: DataRandomizationResult) -> Figure:
    """Digits on top; below, per method, each digit's map from the true-label model and from
    the permuted-label model side by side."""
    methods, _, shown = result.maps.shape[:3]
    figure = new_figure(CELL_INCHES * 2 * shown + 1.0, CELL_INCHES * (methods + 1) + 0.8)
    axes = figure.subplots(methods + 1, 2 * shown, squeeze=False)
    for n in range(shown):
        for side, label in enumerate(("true labels", "permuted labels")):
            column = 2 * n + side
            axes[0, column].imshow(result.images[n], cmap="gray", vmin=0.0, vmax=1.0)
            axes[0, column].set_title(label, fontsize=7)
            for m in range(methods):
                axes[m + 1, column].imshow(result.maps[m, side, n], cmap="gray", vmin=0, vmax=1)
    for m, method in enumerate(result.methods):
        axes[m + 1, 0].set_ylabel(method, fontsize=8)
    axes[0, 0].set_ylabel("digit", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    accuracies = ", ".join(
        f"{t.labeling} labels: train {t.train_accuracy:.0%}, test {t.test_accuracy:.0%}"
        for t in result.models
    )
    figure.suptitle(f"data randomization ({accuracies})", fontsize=9)
    return figure


def faithfulness_figure(report: FaithfulnessReport) -> Figure:
    """Deletion and insertion curves side by side: each method's mean over the images.

    The legend gives each method's mean area; the random baseline is dashed.
    """
    from salience.evaluation.faithfulness import DELETION, MODES, RANDOM_METHOD

    figure = new_figure(10.0, 4.0, "faithfulness curves")
    axes = figure.subplots(1, 2, sharey=True)
    for axis, mode in zip(axes, MODES, strict=True):
        better = "lower" if mode == DELETION else "higher"
        for entry in report.methods:
            curve = getattr(entry, mode)
            style = {"linestyle": "--", "color": "gray"} if entry.method == RANDOM_METHOD else {}
            axis.plot(
                curve.fractions.numpy(), curve.scores.mean(dim=0).numpy(),
                label=f"{entry.method} (AUC {curve.mean_auc:.3f})", **style,
            )  # fmt: skip
        axis.set_title(f"{mode} ({better} AUC is better)")
        verb = "deleted" if mode == DELETION else "inserted"
        axis.set_xlabel(f"fraction of pixels {verb}, most salient first")
        axis.set_xlim(0.0, 1.0)
        axis.legend(fontsize="small")
    kind = report.methods[0].deletion.score_kind if report.methods else "probability"
    axes[0].set_ylabel(f"{kind} of the explained class (mean of {len(report.images)} images)")
    return figure
