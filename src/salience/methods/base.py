"""The explainer contract: configuration in, :class:`Explanation` out, nothing stored per call.

Every explanation passes two checks of its numbers: the input goes through the adapter's
``prepare_input``, which refuses NaN and infinite values (:class:`NonFiniteInputError`), and the
scores and maps of a finite input must be finite too (:class:`NonFiniteOutputError`: the model
overflows), so a NaN never comes back as a map of zeros.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from salience.adapters.base import (
    DifferentiableAdapter,
    GradientsUnavailableError,
    Need,
    Outputs,
    check_finite_output,
)
from salience.adapters.fused import recording_execution
from salience.adapters.inference_copy import one_state_per_call
from salience.errors import InvalidInputError
from salience.explanation import Explanation
from salience.methods.options import Option
from salience.opening import adapter_for
from salience.outputs import SIGMOID, SOFTMAX, check_output_kind, explained_score
from salience.registry import available, get, register
from salience.targets import (
    SCORE_KINDS,
    Selection,
    TargetLike,
    TargetSpec,
    parse_target,
    resolve,
    target_scores,
)

EXPLAINER = "method"
DEFAULT_CHUNK_SIZE = 8
"""Samples per forward/backward pass for multi-pass methods (measured: bench/chunk_size.py)."""


def register_explainer(name: str) -> Callable[[type], type]:
    """Register an :class:`Explainer` subclass under ``name`` and set its ``name`` attribute."""

    def decorator(cls: type) -> type:
        cls.name = name
        return register(EXPLAINER, name)(cls)

    return decorator


def resolve_output_kind(
    adapter: object, x: Tensor, output_kind: str | None = None, *, detect: bool = True
) -> str | None:
    """How the outputs of a pass on inputs like ``x`` read: ``output_kind`` when given, else
    (when ``detect``) what the final activation the adapter cuts says: ``"sigmoid"`` for a cut
    sigmoid (one binary logit or independent labels: each probability is σ of its logit),
    ``"softmax"`` for a cut softmax; None when nothing says.

    Raises
    ------
    OutputKindError
        For an unknown output kind.
    """
    kind = check_output_kind(output_kind)
    if kind is not None or not detect:
        return kind
    final = getattr(adapter, "final_activation", None)
    cut = final(x) if callable(final) else None
    return cut if cut in (SIGMOID, SOFTMAX) else None


def output_kind_for(
    explainers: Sequence[Explainer],
    adapter: object,
    x: Tensor,
    score: str,
    output_kind: str | None,
) -> str | None:
    """The output kind a call of ``explainers`` explaining ``score`` hands to their
    :meth:`~Explainer.attribute`: the one given, else the one detected when one of them reads
    it (:attr:`~Explainer.reads_output_kind`) or a probability is explained."""
    detect = score == "probability" or any(e.reads_output_kind for e in explainers)
    return resolve_output_kind(adapter, x, output_kind, detect=detect)


def score_to_explain(adapter: object, x: Tensor, score: str, output_kind: str | None = None) -> str:
    """The score a request explains (:func:`salience.outputs.explained_score`), recorded as the
    explanation's ``score_kind``.

    The output kind is ``output_kind`` when given; otherwise, for ``score="probability"`` only,
    it is read from the final activation the adapter cuts (a sigmoid: σ(logit) is explained;
    :func:`resolve_output_kind`).

    Raises
    ------
    InvalidInputError
        For an unknown score.
    OutputKindError
        For an unknown output kind, or a probability of a regression.
    """
    if score not in SCORE_KINDS:
        raise InvalidInputError(f"unknown score {score!r}; choose one of {', '.join(SCORE_KINDS)}")
    kind = resolve_output_kind(adapter, x, output_kind, detect=score == "probability")
    return score if kind is None else explained_score(score, kind)


def black_box_methods() -> list[str]:
    """The registered methods that need only a model's outputs: those that explain black boxes."""
    return [name for name in available(EXPLAINER) if not get(EXPLAINER, name).needs_gradients]


@dataclass(frozen=True)
class Attribution:
    """What :meth:`Explainer.attribute` returns for a batch."""

    maps: Tensor
    selection: Selection
    scores: Tensor
    info: dict[str, Any] = field(default_factory=dict)
    #: The model's outputs on the unperturbed batch, when the method ran it.
    outputs: Tensor | None = None


class Explainer(ABC):
    """Base class of all saliency methods.

    Parameters
    ----------
    model : torch.nn.Module, Keras model, adapter, or a model's path or name
        The model to explain (:func:`salience.opening.adapter_for`).
    """

    name: ClassVar[str] = ""
    #: The paper that defines the method, e.g. "Selvaraju et al. 2017".
    paper: ClassVar[str] = ""
    #: False for methods that only need the model's outputs (they explain black boxes too).
    needs_gradients: ClassVar[bool] = True
    #: True for methods computed from one forward + backward pass (usable inside SmoothGrad).
    single_pass: ClassVar[bool] = False
    #: The keyword options the class adds to its parents' (see ``options_of``).
    options: ClassVar[tuple[Option, ...]] = ()
    #: True for methods that hand the options they do not take to another method (SmoothGrad).
    forwards_options: ClassVar[bool] = False
    #: True for methods whose arithmetic depends on how the outputs read (RISE and Score-CAM
    #: weigh masks by a softmax for classes, by σ for labels): the call detects the output kind
    #: for them when it is not given (:func:`resolve_output_kind`).
    reads_output_kind: ClassVar[bool] = False
    #: True for methods whose map of a batch is, image by image, the map of each image alone
    #: (up to float summation order): the batch runner explains such images in groups.
    batches_exactly: ClassVar[bool] = False

    #: The adapter: a :class:`~salience.adapters.base.DifferentiableAdapter` for methods that
    #: need gradients (checked when the explainer is made); methods that need outputs only
    #: declare ``adapter: BlackBoxAdapter``.
    adapter: DifferentiableAdapter

    def __init__(self, model: object) -> None:
        adapter = adapter_for(model)
        if self.needs_gradients and not isinstance(adapter, DifferentiableAdapter):
            raise GradientsUnavailableError(
                f"{self.name} needs gradients or layer activations, which a black-box model "
                f"({type(adapter).__name__}) cannot give; methods for black-box models: "
                f"{', '.join(black_box_methods()) or 'none'}"
            )
        self.adapter = adapter

    def params(self) -> dict[str, Any]:
        """The method's configuration, recorded on every explanation."""
        return {}

    def info(self, x: Tensor, out: Outputs) -> dict[str, Any]:
        """What a single-pass method reports about one pass (e.g. the layer it looked at)."""
        return {}

    def __call__(
        self,
        x: Tensor,
        target: TargetLike = None,
        *,
        score: str = "logit",
        class_names: Sequence[str] | None = None,
        output_kind: str | None = None,
    ) -> Explanation:
        """Explain a batch ``x`` of shape ``(N, ...)``.

        Parameters
        ----------
        x : Tensor
            The inputs, batched; every value finite.
        target : int, str, sequence of int, callable or None
            What to explain: None (the predicted class), a class index (or one per sample), a
            class name, ``"top-K"``, or a callable ``outputs -> (N,) scores``.
        score : {"logit", "probability"}
            Explain the logit (default) or the probability: the softmax of class logits, σ of
            a binary or multi-label logit.
        class_names : sequence of str, optional
            Names of the outputs, to accept class names as targets and label the result.
        output_kind : {"softmax", "sigmoid", "multilabel", "regression"}, optional
            How the outputs read (:mod:`salience.outputs`); by default from the final
            activation the adapter cuts.

        Raises
        ------
        NonFiniteInputError
            When ``x`` holds NaN or infinite values (a ``ValueError``).
        NonFiniteOutputError
            When the model's scores or the maps of the finite ``x`` are not finite.
        """
        spec = parse_target(target, class_names)
        with one_state_per_call():
            inputs = self.adapter.prepare_input(x)
            kind = output_kind_for([self], self.adapter, inputs, score, output_kind)
            score = score_to_explain(self.adapter, inputs, score, kind)
            result = self.attribute_reported(inputs, spec, score, output_kind=kind)
        return self.explanation(result, score, class_names)

    def attribute_reported(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """:meth:`attribute`, its info saying how its long runs of passes ran (``execution``:
        a captured program, or eager and why), when it had any."""
        with recording_execution() as execution:
            result = self.attribute(x, spec, score, output_kind=output_kind)
        if execution:
            result.info["execution"] = "; ".join(execution)
        return result

    def explanation(
        self, result: Attribution, score: str, class_names: Sequence[str] | None = None
    ) -> Explanation:
        """Wrap what :meth:`attribute` returned into an :class:`Explanation`.

        Raises
        ------
        NonFiniteOutputError
            When the scores or the maps hold NaN or infinite values.
        """
        check_finite_output(result.scores, "the model's scores")
        check_finite_output(result.maps, f"the {self.name} maps")
        n = result.maps.shape[0]
        targets = (
            result.selection.indices
            if result.selection.indices is not None
            else torch.full((n, 1), -1, dtype=torch.long)
        )
        explanation = Explanation(
            attributions=result.maps.detach().float().cpu(),
            method=self.name,
            targets=targets.cpu(),
            scores=result.scores.detach().float().cpu(),
            score_kind=score,
            params=self.params(),
            info=result.info,
            outputs=None if result.outputs is None else result.outputs.detach().float().cpu(),
        )
        return explanation.with_names(list(class_names) if class_names is not None else None)

    @abstractmethod
    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """Maps ``(N, K, *S)`` for the batch ``x`` (already on the model's device).

        ``score`` is the explained score (:func:`score_to_explain`); ``output_kind`` how the
        outputs read (:func:`resolve_output_kind`; None: not known), which a method reads
        when its arithmetic depends on it (:attr:`reads_output_kind`).
        """

    def fixed_selection(self, x: Tensor, spec: TargetSpec, score: str) -> tuple[Selection, Tensor]:
        """Resolve ``spec`` on the unperturbed input with one forward pass; also its scores."""
        selection, scores, _ = self.unperturbed_pass(x, spec, score)
        return selection, scores

    def unperturbed_pass(
        self, x: Tensor, spec: TargetSpec, score: str
    ) -> tuple[Selection, Tensor, Tensor]:
        """One forward pass on the unperturbed input: the selection, its scores, the outputs."""
        outputs = self.adapter.forward(x, chunk_size=DEFAULT_CHUNK_SIZE)
        selection = resolve(spec, outputs)
        return selection, target_scores(outputs, selection, score), outputs


class SinglePassExplainer(Explainer):
    """A method computed from what one forward (+ backward) pass gives: :meth:`need` says what.

    Several single-pass methods asked for at once share their passes: :func:`attribute_shared`
    merges the needs of methods that capture the same layer under the same backward rule into
    ONE forward and ONE backward pass.
    """

    single_pass = True
    batches_exactly = True  # one pass over the batch; each sample's map is its own rows

    @abstractmethod
    def need(self, x: Tensor) -> Need:
        """What the pass must give for inputs shaped like ``x``."""

    @abstractmethod
    def maps_from(self, x: Tensor, out: Outputs) -> Tensor:
        """The method's maps ``(N, K, *S)`` from the pass's outputs."""

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """One pass on ``x``; the target is resolved from the same forward pass."""
        return attribute_shared([self], x, spec, score)[0]

    def attribute_fixed(self, x: Tensor, selection: Selection, score: str) -> Tensor:
        """Maps ``(B, K, *S)`` for a batch whose targets are already resolved."""
        out = self.adapter.run(
            x, lambda logits: target_scores(logits, selection, score), self.need(x)
        )
        return self.maps_from(x, out)


def _merged(needs: Sequence[Need]) -> Need:
    first = needs[0]
    return Need(
        input_grad=any(n.input_grad for n in needs),
        layer=first.layer,
        layer_grad=any(n.layer_grad for n in needs),
        backward_rule=first.backward_rule,
    )


def attribute_shared(
    explainers: Sequence[SinglePassExplainer], x: Tensor, spec: TargetSpec, score: str
) -> list[Attribution]:
    """Run single-pass methods on one batch with as few passes as possible.

    Methods on the same model that capture the same layer (or none) under the same backward rule
    share one forward and one backward pass; each method's maps are identical to the maps it
    computes alone. The target is resolved on the first pass and reused by the others.

    Returns
    -------
    list of Attribution
        One per explainer, in order.
    """
    groups: dict[tuple, list[int]] = {}
    needs = [explainer.need(x) for explainer in explainers]
    for i, (explainer, need) in enumerate(zip(explainers, needs, strict=True)):
        key = (id(explainer.adapter.model), need.layer, need.backward_rule)
        groups.setdefault(key, []).append(i)
    results: list[Attribution | None] = [None] * len(explainers)
    chosen: list[Selection] = []

    def score_fn(logits: Tensor) -> Tensor:
        # The first pass resolves the target; later passes explain the same selection.
        chosen.append(chosen[0] if chosen else resolve(spec, logits))
        return target_scores(logits, chosen[-1], score)

    for members in groups.values():
        adapter = explainers[members[0]].adapter
        out = adapter.run(x, score_fn, _merged([needs[i] for i in members]))
        selection = chosen[-1]
        for i in members:
            maps = explainers[i].maps_from(x, out)
            info = explainers[i].info(x, out)
            results[i] = Attribution(maps, selection, out.scores, info, out.outputs)
    return [result for result in results if result is not None]


class GradientExplainer(SinglePassExplainer):
    """A method computed from the input gradient of one forward + backward pass."""

    rule: ClassVar[str | None] = None

    def need(self, x: Tensor) -> Need:
        """The input gradient (under this method's backward rule)."""
        return Need(input_grad=True, backward_rule=self.rule)

    def maps_from(self, x: Tensor, out: Outputs) -> Tensor:
        """:meth:`combine` applied to the input gradient."""
        assert out.input_grad is not None
        return self.combine(x, out.input_grad)

    @abstractmethod
    def combine(self, x: Tensor, grad: Tensor) -> Tensor:
        """Turn the input gradient ``(B, K, *S)`` into the method's map."""
