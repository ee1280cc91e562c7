"""The one-call Python API: ``salience.explain(model, x, method=..., target=...)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from salience.adapters.inference_copy import one_state_per_call
from salience.errors import InvalidInputError, UnsupportedError
from salience.explanation import Explanation
from salience.methods.base import (
    EXPLAINER,
    Explainer,
    SinglePassExplainer,
    attribute_shared,
    output_kind_for,
    score_to_explain,
)
from salience.methods.options import check_option_names, checked_options, options_of
from salience.opening import adapter_for
from salience.registry import get
from salience.targets import TargetLike, parse_target


def make_explainer(model: object, method: str = "gradient", **options: Any) -> Explainer:
    """Build the registered explainer ``method`` for ``model`` with its options.

    Raises
    ------
    InvalidInputError
        For an option the method does not take (naming the close matches) or a value out of
        its bounds (:mod:`salience.methods.options`).
    """
    cls = get(EXPLAINER, method)
    if not cls.forwards_options:  # SmoothGrad checks what it hands to its base method
        check_option_names({cls.name: cls}, options)
    return cls(model, **options)


def method_options(method: str | type, values: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` that the method takes as keyword options (its schema's names).

    Lets one set of options (say ``layer=..., n_samples=...``) configure several methods.
    """
    cls = get(EXPLAINER, method) if isinstance(method, str) else method
    accepted = options_of(cls)
    return {key: value for key, value in values.items() if key in accepted}


def explain(
    model: object,
    x: Tensor,
    *,
    method: str = "gradient",
    target: TargetLike = None,
    score: str = "logit",
    class_names: Sequence[str] | None = None,
    output_kind: str | None = None,
    output: str | int | None = None,
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
        Which score to explain: the logit, or the probability (the softmax of class logits,
        σ of a binary or multi-label logit).
    class_names : sequence of str, optional
        Output names (accept names as targets; label the result).
    output_kind : {"softmax", "sigmoid", "multilabel", "regression"}, optional
        How the outputs read; by default from the model's final activation
        (:mod:`salience.outputs`).
    output : str or int, optional
        Which output to explain of a model that returns a tuple, dict, dataclass or
        ``ModelOutput`` (``"logits"``, ``0``); by default the only one, or ``logits``.
    **options
        The method's parameters, e.g. ``n_samples=50`` for SmoothGrad, ``layer="_blocks.15"``
        for a CAM.
    """
    explainer = make_explainer(with_output(model, output), method, **options)
    return explainer(x, target, score=score, class_names=class_names, output_kind=output_kind)


def with_output(model: object, output: str | int | None) -> object:
    """``model`` as an adapter that explains its output ``output`` (None: ``model`` itself).

    Raises
    ------
    UnsupportedError
        For a model whose adapter cannot choose among outputs (a TensorFlow model).
    """
    if output is None:
        return model
    adapter = adapter_for(model)
    choose = getattr(adapter, "with_output", None)
    if choose is None:
        raise UnsupportedError(
            f"a {type(adapter).__name__} explains its model's first output; output={output!r} "
            "is for PyTorch, Keras and ONNX models"
        )
    return choose(output)


def explain_all(
    model: object,
    x: Tensor,
    methods: Sequence[str | Explainer],
    *,
    target: TargetLike = None,
    score: str = "logit",
    class_names: Sequence[str] | None = None,
    output_kind: str | None = None,
    output: str | int | None = None,
    **options: Any,
) -> dict[str, Explanation]:
    """Explain the batch ``x`` with several methods, sharing passes where possible.

    Single-pass methods that look at the same layer under the same backward rule (the gradient
    CAMs and Eigen-CAM on one layer; gradient and gradient × input) share ONE forward and ONE
    backward pass; each map equals the map the method computes alone.

    Parameters
    ----------
    model : torch.nn.Module or adapter
        The model.
    x : Tensor
        Inputs ``(N, ...)``.
    methods : sequence of str or Explainer
        Method names, or explainers already configured (built on any model).
    target, score, class_names, output_kind, output
        As for :func:`explain`; the target is resolved once, for all methods.
    **options
        Options given to every method that accepts them (``layer``, ``n_samples``, ...).

    Returns
    -------
    dict of str to Explanation
        Keyed by method name, in the order given.
    """
    named = {method: get(EXPLAINER, method) for method in methods if isinstance(method, str)}
    shares = checked_options(named, options)  # an option no named method takes fails
    adapter = adapter_for(with_output(model, output))
    explainers = [
        method
        if isinstance(method, Explainer)
        else make_explainer(adapter, method, **shares[method])
        for method in methods
    ]
    names = [explainer.name for explainer in explainers]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"each method may be asked for once; got {', '.join(names)}")
    spec = parse_target(target, class_names)
    shared = [e for e in explainers if isinstance(e, SinglePassExplainer)]
    with one_state_per_call():  # every map is of the model as it was when the call began
        inputs = adapter.prepare_input(x)
        kind = output_kind_for(explainers, adapter, inputs, score, output_kind)
        score = score_to_explain(adapter, inputs, score, kind)
        attributions = attribute_shared(shared, inputs, spec, score)
        results = {e.name: a for e, a in zip(shared, attributions, strict=True)}
        for explainer in explainers:
            if explainer.name not in results:
                results[explainer.name] = explainer.attribute_reported(
                    inputs, spec, score, output_kind=kind
                )
    return {
        explainer.name: explainer.explanation(results[explainer.name], score, class_names)
        for explainer in explainers
    }
