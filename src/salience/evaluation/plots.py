"""Figures of the evaluation results: sanity-check maps and curves, agreement matrices.

Every function returns a matplotlib ``Figure`` drawn without pyplot (thread-safe); write it with
:func:`salience.viz.save_figure`. A result that writes its own figures (``save()``) draws them
in its own module, so that results never import this one: the import goes one way, from the
figures to the results. This module gathers them.
"""

from __future__ import annotations

from salience.evaluation.agreement import agreement_figure
from salience.evaluation.data_randomization import data_randomization_figure
from salience.evaluation.faithfulness import faithfulness_figure
from salience.evaluation.randomization import CELL_INCHES, sanity_curves, sanity_figure
from salience.evaluation.similarity import METRIC_TITLES

__all__ = [
    "CELL_INCHES",
    "METRIC_TITLES",
    "agreement_figure",
    "data_randomization_figure",
    "faithfulness_figure",
    "sanity_curves",
    "sanity_figure",
]
