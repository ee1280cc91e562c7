"""The explainer contract: configuration in, :class:`Explanation` out, nothing stored per call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from salience.adapters.base import Need
from salience.adapters.torch import TorchAdapter, as_adapter
from salience.explanation import Explanation
from salience.registry import register
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


@dataclass(frozen=True)
class Attribution:
    """What :meth:`Explainer.attribute` returns for a batch."""

    maps: Tensor
    selection: Selection
    scores: Tensor
    info: dict[str, Any] = field(default_factory=dict)


class Explainer(ABC):
    """Base class of all saliency methods.

    Parameters
    ----------
    model : torch.nn.Module or adapter
        The model to explain.
    """

    name: ClassVar[str] = ""
    #: True for methods computed from one forward + backward pass (usable inside SmoothGrad).
    single_pass: ClassVar[bool] = False

    def __init__(self, model: object) -> None:
        self.adapter: TorchAdapter = as_adapter(model)

    def params(self) -> dict[str, Any]:
        """The method's configuration, recorded on every explanation."""
        return {}

    def __call__(
        self,
        x: Tensor,
        target: TargetLike = None,
        *,
        score: str = "logit",
        class_names: Sequence[str] | None = None,
    ) -> Explanation:
        """Explain a batch ``x`` of shape ``(N, ...)``.

        Parameters
        ----------
        x : Tensor
            The inputs, batched.
        target : int, str, sequence of int, callable or None
            What to explain: None (the predicted class), a class index (or one per sample), a
            class name, ``"top-K"``, or a callable ``outputs -> (N,) scores``.
        score : {"logit", "probability"}
            Explain the logit (default) or the softmax probability.
        class_names : sequence of str, optional
            Names of the outputs, to accept class names as targets and label the result.
        """
        if score not in SCORE_KINDS:
            raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORE_KINDS)}")
        spec = parse_target(target, class_names)
        result = self.attribute(self.adapter.prepare_input(x), spec, score)
        targets = (
            result.selection.indices
            if result.selection.indices is not None
            else torch.full((x.shape[0], 1), -1, dtype=torch.long)
        )
        explanation = Explanation(
            attributions=result.maps.detach().float().cpu(),
            method=self.name,
            targets=targets.cpu(),
            scores=result.scores.detach().float().cpu(),
            score_kind=score,
            params=self.params(),
            info=result.info,
        )
        return explanation.with_names(list(class_names) if class_names is not None else None)

    @abstractmethod
    def attribute(self, x: Tensor, spec: TargetSpec, score: str) -> Attribution:
        """Maps ``(N, K, *S)`` for the batch ``x`` (already on the model's device)."""

    def fixed_selection(self, x: Tensor, spec: TargetSpec, score: str) -> tuple[Selection, Tensor]:
        """Resolve ``spec`` on the unperturbed input with one forward pass; also its scores."""
        outputs = self.adapter.forward(x, chunk_size=DEFAULT_CHUNK_SIZE)
        selection = resolve(spec, outputs)
        return selection, target_scores(outputs, selection, score)


class GradientExplainer(Explainer):
    """A method computed from one forward + backward pass per batch."""

    single_pass = True
    need: ClassVar[Need] = Need(input_grad=True)

    def attribute(self, x: Tensor, spec: TargetSpec, score: str) -> Attribution:
        """One pass on ``x``; the target is resolved from the same forward pass."""
        chosen: list[Selection] = []

        def score_fn(logits: Tensor) -> Tensor:
            chosen.append(resolve(spec, logits))
            return target_scores(logits, chosen[-1], score)

        out = self.adapter.run(x, score_fn, self.need)
        assert out.input_grad is not None
        return Attribution(self.combine(x, out.input_grad), chosen[-1], out.scores)

    def attribute_fixed(self, x: Tensor, selection: Selection, score: str) -> Tensor:
        """Maps ``(B, K, *S)`` for a batch whose targets are already resolved."""
        out = self.adapter.run(x, lambda logits: target_scores(logits, selection, score), self.need)
        assert out.input_grad is not None
        return self.combine(x, out.input_grad)

    @abstractmethod
    def combine(self, x: Tensor, grad: Tensor) -> Tensor:
        """Turn the input gradient ``(B, K, *S)`` into the method's map."""
