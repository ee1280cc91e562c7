"""Charts of feature attributions: signed bars per row, and a summary over many rows.

Signed attributions are drawn with a diverging colour map centred on zero (a feature that pushed
the score up is red, one that pushed it down is blue, the shade is the size); the summary shows
each feature's mean absolute attribution and, beside it, a beeswarm-style strip of every row's
attribution coloured by the feature's value. Figures are made without pyplot
(:func:`salience.viz.new_figure`), so threads may draw at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from salience.errors import InvalidInputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

    from salience.explanation import Explanation

DIVERGING = "RdBu_r"
"""Blue below zero, white at zero, red above."""
TOP_FEATURES = 10
"""Features shown per chart, by largest absolute attribution."""
MAX_CHART_ROWS = 8
"""Rows drawn in one figure of per-row bars."""


def top_features(attributions: np.ndarray, count: int = TOP_FEATURES) -> np.ndarray:
    """Indices of the ``count`` largest ``|attribution|`` (of one row, or mean over rows), largest
    first; ties keep the features' order."""
    magnitude = np.abs(np.asarray(attributions, dtype=np.float64))
    if magnitude.ndim == 2:
        magnitude = magnitude.mean(axis=0)
    return np.argsort(-magnitude, kind="stable")[:count]


def _check(attributions: np.ndarray, names: Sequence[str]) -> np.ndarray:
    values = np.asarray(attributions, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.shape[1] != len(names):
        raise InvalidInputError(
            f"attributions of shape {values.shape} for {len(names)} feature names; give (rows, "
            "features) with one name per feature"
        )
    return values


def _diverging() -> Colormap:
    """The diverging colour map (matplotlib is imported by the figure that uses it)."""
    import matplotlib

    return matplotlib.colormaps[DIVERGING]


def _signed_bars(axis: Axes, row: np.ndarray, names: Sequence[str], top: int) -> None:
    """One row's top features as horizontal bars, largest on top, coloured by sign and size."""
    chosen = top_features(row, top)[::-1]
    values = row[chosen]
    scale = float(np.abs(values).max()) or 1.0
    colours = _diverging()(0.5 + 0.5 * values / scale)
    axis.barh(range(len(chosen)), values, color=colours, edgecolor="0.3", linewidth=0.4)
    axis.set_yticks(range(len(chosen)), [names[i] for i in chosen], fontsize=7)
    axis.axvline(0.0, color="0.2", linewidth=0.6)
    axis.set_xlim(-1.08 * scale, 1.08 * scale)
    axis.tick_params(axis="x", labelsize=7)


def rows_figure(
    attributions: np.ndarray,
    names: Sequence[str],
    titles: Sequence[str],
    *,
    top: int = TOP_FEATURES,
) -> Figure:
    """Signed bar charts of the top features of each row (at most :data:`MAX_CHART_ROWS`).

    Parameters
    ----------
    attributions : numpy.ndarray
        ``(rows, features)`` attributions.
    names : sequence of str
        The features' names.
    titles : sequence of str
        A title per row (e.g. ``"row 3: class 1, 0.93"``).
    top : int
        Features per chart.
    """
    from salience.viz import new_figure

    values = _check(attributions, names)[:MAX_CHART_ROWS]
    count = len(values)
    shown = min(top, values.shape[1])
    columns = min(count, 2)
    lines = -(-count // columns)
    figure = new_figure(4.2 * columns, (0.9 + 0.22 * shown) * lines, "tabular charts")
    axes = figure.subplots(lines, columns, squeeze=False)
    for k, axis in enumerate(axes.flat):
        if k >= count:
            axis.set_visible(False)
            continue
        _signed_bars(axis, values[k], names, top)
        axis.set_title(titles[k] if k < len(titles) else f"row {k + 1}", fontsize=8)
    return figure


def chart_titles(explanation: Explanation) -> list[str]:
    """``row 3: class 1 (logit 2.31)`` for each row's first target."""
    names = explanation.target_names
    return [
        f"row {n + 1}: {names[n][0] if names else int(explanation.targets[n, 0])} "
        f"({explanation.score_kind} {float(explanation.scores[n, 0]):.3g})"
        for n in range(len(explanation))
    ]


def beeswarm_offsets(values: np.ndarray, *, bins: int = 60, width: float = 0.4) -> np.ndarray:
    """Vertical offsets that spread points of equal (binned) value apart, alternately up and
    down, as in a beeswarm plot; deterministic."""
    values = np.asarray(values, dtype=np.float64)
    offsets = np.zeros(len(values))
    if len(values) < 2:
        return offsets
    low, high = float(values.min()), float(values.max())
    span = high - low or 1.0
    cells = np.minimum(((values - low) / span * bins).astype(int), bins - 1)
    most = max(int(np.bincount(cells).max()), 1)
    step = width / most
    for cell in np.unique(cells):
        members = np.flatnonzero(cells == cell)
        ranks = np.arange(len(members))
        offsets[members] = step * ((ranks + 1) // 2) * np.where(ranks % 2 == 1, 1.0, -1.0)
    return offsets


def summary_figure(
    attributions: np.ndarray,
    features: np.ndarray,
    names: Sequence[str],
    *,
    title: str = "",
    top: int = TOP_FEATURES,
) -> Figure:
    """Over many rows: mean ``|attribution|`` per feature (bars) and every row's attribution as
    a beeswarm strip per feature, coloured from the feature's low (blue) to high (red) values.

    Parameters
    ----------
    attributions : numpy.ndarray
        ``(rows, features)`` attributions.
    features : numpy.ndarray
        ``(rows, features)`` the inputs' values (the colours of the strip).
    names : sequence of str
        The features' names.
    title : str
        The figure's title.
    top : int
        Features shown, by mean absolute attribution.
    """
    from salience.viz import new_figure

    values = _check(attributions, names)
    inputs = _check(features, names)
    if inputs.shape != values.shape:
        raise InvalidInputError(
            f"feature values {inputs.shape} do not match attributions {values.shape}"
        )
    chosen = top_features(values, top)[::-1]
    figure = new_figure(9.0, 1.2 + 0.3 * len(chosen), "tabular charts")
    bars, strip = figure.subplots(1, 2, sharey=True, width_ratios=(1, 2))
    mean = np.abs(values).mean(axis=0)[chosen]
    bars.barh(range(len(chosen)), mean, color="0.45")
    bars.set_yticks(range(len(chosen)), [names[i] for i in chosen], fontsize=7)
    bars.set_xlabel("mean |attribution|", fontsize=8)
    cmap = _diverging()
    for row, feature in enumerate(chosen):
        column, own = values[:, feature], inputs[:, feature]
        span = float(own.max() - own.min()) or 1.0
        shade = cmap((own - own.min()) / span)
        strip.scatter(
            column, row + beeswarm_offsets(column), s=6, c=shade, linewidths=0, rasterized=True
        )
    strip.axvline(0.0, color="0.2", linewidth=0.6)
    strip.set_xlabel("attribution (colour: the feature's value, low blue, high red)", fontsize=8)
    for axis in (bars, strip):
        axis.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure
