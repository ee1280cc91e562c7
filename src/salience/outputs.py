"""What a model's outputs are, and its prediction in their own terms.

A model's output kind says how its outputs read:

- ``softmax``: class logits, one class wins (the probabilities are a softmax over them);
- ``sigmoid``: one logit of a binary decision (its probability is σ(logit));
- ``multilabel``: independent logits, one per label (each label's probability is σ of its logit);
- ``regression``: values (no probability).

The kind is detected from the model's final activation, which the adapter cuts on its private
copy so that logits are explained (:func:`detect_output_kind`), and can be given instead
(``output_kind=``, ``--output-kind``, the preset's ``output_kind``). :func:`summarize` turns one
sample's outputs into its prediction, the one computation behind what ``salience explain``
prints, the server's predictions and the batch runner's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from salience.errors import SalienceError

SOFTMAX = "softmax"
SIGMOID = "sigmoid"
MULTILABEL = "multilabel"
REGRESSION = "regression"
OUTPUT_KINDS: tuple[str, ...] = (SOFTMAX, SIGMOID, MULTILABEL, REGRESSION)
PROBABILISTIC: frozenset[str] = frozenset({SOFTMAX, SIGMOID, MULTILABEL})


class OutputKindError(SalienceError, ValueError):
    """An output kind that is unknown, or that does not fit the model's outputs."""


def check_output_kind(kind: str | None) -> str | None:
    """``kind`` in lower case (None stays None: detect it).

    Raises
    ------
    OutputKindError
        For a kind that is not one of :data:`OUTPUT_KINDS`, listing them.
    """
    if kind is None:
        return None
    if not isinstance(kind, str) or kind.lower() not in OUTPUT_KINDS:
        raise OutputKindError(
            f"unknown output kind {kind!r}; choose one of {', '.join(OUTPUT_KINDS)}"
        )
    return kind.lower()


def detect_output_kind(final_activation: str | None, count: int) -> str:
    """The output kind of a model from its (cut) final activation and its number of outputs.

    A final softmax makes class logits; a final sigmoid a binary logit (one output) or
    independent labels (several); without either, one output is a regression value and several
    are class logits.
    """
    if final_activation == SIGMOID:
        return SIGMOID if count == 1 else MULTILABEL
    if final_activation == SOFTMAX or count > 1:
        return SOFTMAX
    return REGRESSION


def check_fits(kind: str, count: int) -> str:
    """``kind``, when ``count`` outputs can be read that way.

    Raises
    ------
    OutputKindError
        A softmax over one output (always 100%), or a binary sigmoid over several outputs.
    """
    if kind == SOFTMAX and count < 2:
        raise OutputKindError(
            "output kind softmax needs two or more outputs, and the model has one; "
            f"choose {SIGMOID} (a binary logit) or {REGRESSION} (a value)"
        )
    if kind == SIGMOID and count != 1:
        raise OutputKindError(
            f"output kind sigmoid is one binary logit, and the model has {count} outputs; "
            f"choose {MULTILABEL} (independent labels) or {SOFTMAX} (classes)"
        )
    return kind


def explained_score(score: str, kind: str) -> str:
    """The score a ``score`` request explains on outputs of this kind (see
    :func:`salience.targets.target_scores`): ``"probability"`` is the softmax for classes and
    σ(logit) (``"sigmoid"``) for binary and multi-label outputs; a regression explains its
    ``"value"``.

    Raises
    ------
    OutputKindError
        For ``score="probability"`` on a regression.
    """
    if score == "probability":
        if kind == REGRESSION:
            raise OutputKindError(
                "score='probability' is not defined for a regression output; explain its value "
                "(score='logit'), or give output_kind='sigmoid' if the output is a binary logit"
            )
        return "sigmoid" if kind in (SIGMOID, MULTILABEL) else "probability"
    if score == "logit" and kind == REGRESSION:
        return "value"
    return score


@dataclass(frozen=True)
class Prediction:
    """One line of a prediction.

    Attributes
    ----------
    index : int
        The output index (for a binary output, 0: the one logit).
    name : str
        The class, label or value's name; the side of a binary decision.
    output : float
        The model's output at ``index`` (its logit or value).
    probability : float or None
        The probability of ``name`` (None for a regression).
    is_positive : bool
        False for the negative side of a binary decision (its probability is 1 − σ(logit)).
    """

    index: int
    name: str
    output: float
    probability: float | None
    is_positive: bool = True

    def text(self) -> str:
        """``"effusion 79.1%"``, or ``"age 4.21"`` for a value."""
        if self.probability is None:
            return f"{self.name} {self.output:.4g}"
        return f"{self.name} {self.probability:.1%}"


@dataclass(frozen=True)
class Summary:
    """A sample's prediction in the terms of its outputs.

    Attributes
    ----------
    kind : str
        The output kind.
    top : list of Prediction
        The classes (softmax), labels (multi-label) by probability, the two sides of a binary
        decision, or every value of a regression, best first.
    """

    kind: str
    top: list[Prediction]

    @property
    def best(self) -> Prediction:
        """The first line: the predicted class, label, side or value."""
        return self.top[0]

    @property
    def predicted(self) -> int:
        """The output index of the prediction (0 for a binary output)."""
        return self.best.index

    def text(self) -> str:
        """The prediction in one phrase, e.g. ``"effusion 79.1%"`` (for a title)."""
        return self.best.text()


def binary_names(names: Sequence[str] | None, negative: str | None = None) -> tuple[str, str]:
    """(negative, positive) names of a binary output: from two names (negative, positive), or
    one name (the positive side) and ``negative`` or its negation (``not effusion``)."""
    if names is not None and len(names) == 2:
        return names[0], names[1]
    positive = names[0] if names else "class 0"
    return negative or f"not {positive}", positive


def output_probabilities(outputs: Tensor, kind: str) -> Tensor | None:
    """Each output's probability: the softmax of class logits, σ of binary and multi-label
    logits; None for a regression. ``outputs`` is one sample's ``(K,)``."""
    if kind == REGRESSION:
        return None
    return torch.softmax(outputs, 0) if kind == SOFTMAX else torch.sigmoid(outputs)


def summarize(
    outputs: Tensor,
    kind: str | None,
    names: Sequence[str] | None = None,
    k: int = 5,
    *,
    negative: str | None = None,
) -> Summary:
    """The prediction of one sample from its outputs (logits or values, a final activation cut).

    Parameters
    ----------
    outputs : Tensor
        One sample's outputs, ``(K,)`` (or ``(1, K)``).
    kind : str or None
        Their output kind (:data:`OUTPUT_KINDS`); None: classes, or a value for one output.
    names : sequence of str, optional
        One name per output; for a binary output one name (the positive side) or two
        (negative, positive).
    k : int
        How many classes or labels to list (a regression lists every value).
    negative : str, optional
        The name of a binary output's negative side (default: ``not`` and the positive name).

    Raises
    ------
    OutputKindError
        When ``kind`` does not fit the outputs.
    """
    values = outputs.detach().reshape(-1).double().cpu()
    count = values.numel()
    kind = check_fits(check_output_kind(kind) or detect_output_kind(None, count), count)

    def name(i: int) -> str:
        return names[i] if names is not None and 0 <= i < len(names) else f"class {i}"

    probabilities = output_probabilities(values, kind)
    if probabilities is None:
        return Summary(kind, [Prediction(i, name(i), float(v), None) for i, v in enumerate(values)])
    if kind == SIGMOID:
        negative, positive = binary_names(names, negative)
        logit, p = float(values[0]), float(probabilities[0])
        sides = [Prediction(0, positive, logit, p), Prediction(0, negative, logit, 1.0 - p, False)]
        return Summary(kind, sides if p >= 0.5 else sides[::-1])
    top = probabilities.topk(min(k, values.numel()))
    return Summary(
        kind,
        [
            Prediction(i, name(i), float(values[i]), float(p))
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ],
    )


def explained_text(summary: Summary, index: int, names: Sequence[str] | None = None) -> str:
    """The prediction of output ``index`` (an explained target), e.g. for a grid's row title:
    its class or label with its probability (a binary output: the positive side's), or its
    value; just its name when it is not among the summary's lines."""
    if summary.kind == SIGMOID:
        return summary.top[0].text() if summary.top[0].is_positive else summary.top[1].text()
    for line in summary.top:
        if line.index == index:
            return line.text()
    return names[index] if names is not None and 0 <= index < len(names) else f"class {index}"


def prediction_lines(summary: Summary, label: str, model: str) -> list[str]:
    """What ``salience explain`` prints of one image's prediction: a heading and one line per
    class (``1. tabby  42.0%  (class 281)``), label, side (``1. effusion 79.1%``) or value."""
    if summary.kind == SOFTMAX:
        lines = [f"{label}: top-{len(summary.top)} predictions of {model}"]
        lines += [
            f"  {rank}. {line.name:<28} {line.probability:6.1%}  (class {line.index})"
            for rank, line in enumerate(summary.top, 1)
        ]
        return lines
    heading = {
        SIGMOID: "prediction (one sigmoid output)",
        MULTILABEL: f"top-{len(summary.top)} labels (independent sigmoids)",
        REGRESSION: "predicted values",
    }[summary.kind]
    lines = [f"{label}: {heading} of {model}"]
    for rank, line in enumerate(summary.top, 1):
        shown = summary.kind != REGRESSION and line.is_positive
        extra = f"  (logit {line.output:.4g})" if shown else ""
        lines.append(f"  {rank}. {line.text()}{extra}")
    return lines
