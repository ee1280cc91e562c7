"""The one-call Python API: ``salience.explain(model, x, method=..., target=...)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from salience.explanation import Explanation
from salience.methods.base import EXPLAINER, Explainer
from salience.registry import get
from salience.targets import TargetLike


def make_explainer(model: object, method: str = "gradient", **options: Any) -> Explainer:
    """Build the registered explainer ``method`` for ``model`` with its options."""
    return get(EXPLAINER, method)(model, **options)


def explain(
    model: object,
    x: Tensor,
    *,
    method: str = "gradient",
    target: TargetLike = None,
    score: str = "logit",
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> Explanation:
    """Explain the batch ``x`` with one method.

    Parameters
    ----------
    model : torch.nn.Module or adapter
        The model.
    x : Tensor
        Inputs ``(N, ...)``.
    method : str
        A registered method name (``salience.available("method")`` lists them).
    target : int, str, sequence of int, callable or None
        What to explain; None is the predicted class.
    score : {"logit", "probability"}
        Which score to explain.
    class_names : sequence of str, optional
        Output names (accept names as targets; label the result).
    **options
        The method's parameters, e.g. ``n_samples=50`` for SmoothGrad.
    """
    return make_explainer(model, method, **options)(x, target, score=score, class_names=class_names)
