"""The contract between saliency methods and a framework: what a method may ask of a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from salience.errors import InvalidInputError, SalienceError

ScoreFn = Callable[[Tensor], Tensor]
"""Maps the model's (logit) outputs ``(N, ...)`` to the ``(N, K)`` scores to explain."""

BACKWARD_RULES: tuple[str, ...] = ("guided_relu",)


@dataclass(frozen=True)
class Need:
    """What a method asks the adapter for in one forward (+ backward) pass.

    Attributes
    ----------
    input_grad : bool
        Gradient of each score with respect to the input.
    layer : str or None
        Capture the activations ``(N, C, *S)`` of the module with this name.
    layer_grad : bool
        Also the gradient of each score with respect to those activations.
    backward_rule : str or None
        A modified backward pass, e.g. ``"guided_relu"`` (guided backpropagation).
    """

    input_grad: bool = False
    layer: str | None = None
    layer_grad: bool = False
    backward_rule: str | None = None

    def __post_init__(self) -> None:
        if self.layer_grad and self.layer is None:
            raise InvalidInputError("layer_grad needs a layer name")
        if self.backward_rule is not None and self.backward_rule not in BACKWARD_RULES:
            raise InvalidInputError(
                f"unknown backward rule {self.backward_rule!r}; known: {', '.join(BACKWARD_RULES)}"
            )

    @property
    def any_grad(self) -> bool:
        """True when a backward pass is needed."""
        return self.input_grad or self.layer_grad


@dataclass(frozen=True)
class Outputs:
    """What one pass returns; every tensor is detached.

    Attributes
    ----------
    outputs : Tensor
        The model's outputs (pre-softmax logits when the model ends in a softmax).
    scores : Tensor
        ``(N, K)`` scores that were explained.
    input_grad : Tensor or None
        ``(N, K, *input.shape[1:])``.
    activations : Tensor or None
        ``(N, C, *S)`` of the requested layer.
    layer_grad : Tensor or None
        ``(N, K, C, *S)``.
    """

    outputs: Tensor
    scores: Tensor
    input_grad: Tensor | None = None
    activations: Tensor | None = None
    layer_grad: Tensor | None = None


class GradientsUnavailableError(SalienceError, TypeError):
    """A method that needs gradients or layer activations, asked of a black-box model."""


class NonFiniteInputError(SalienceError, ValueError):
    """An input holds NaN or infinite values: no saliency map of it means anything."""


class NonFiniteOutputError(SalienceError, ValueError):
    """A finite input gave non-finite scores, maps or activations: the model's arithmetic
    overflows (or divides by zero) on it."""


def non_finite_count(x: Tensor) -> int:
    """How many values of ``x`` are NaN or ±inf (0 for integer tensors)."""
    if not (x.is_floating_point() or x.is_complex()):
        return 0
    finite = torch.isfinite(x)
    return 0 if bool(finite.all()) else int(finite.numel() - finite.sum())


def check_finite_input(x: Tensor) -> Tensor:
    """``x`` itself; raises :class:`NonFiniteInputError` when any value is NaN or ±inf."""
    count = non_finite_count(x)
    if count:
        raise NonFiniteInputError(
            f"the input holds {count} non-finite value{'s' if count > 1 else ''} (NaN or inf) "
            f"of {x.numel()}; replace them before explaining (e.g. torch.nan_to_num(x)) or fix "
            "the preprocessing that produced them"
        )
    return x


def check_finite_output(x: Tensor, what: str) -> Tensor:
    """``x`` itself; raises :class:`NonFiniteOutputError` naming ``what`` (plural: "the
    model's scores") when it is not finite."""
    count = non_finite_count(x)
    if count:
        raise NonFiniteOutputError(
            f"{what} hold {count} non-finite value"
            f"{'s' if count > 1 else ''} (NaN or inf) on a finite input: the model's arithmetic "
            "overflows on it; check the input's scale (its preprocessing) or run the model in "
            "float64 (model.double())"
        )
    return x


@runtime_checkable
class ModelAdapter(Protocol):
    """A model seen through one narrow contract; methods never touch the framework themselves.

    Black-box adapters (``differentiable = False``, e.g. ONNX) implement :meth:`forward` and
    :meth:`prepare_input` only; :meth:`run` raises :class:`GradientsUnavailableError`.
    """

    is_adapter: bool
    differentiable: bool

    def prepare_input(self, x: Tensor) -> Tensor:
        """The batch moved to the model's device and dtype, validated."""
        ...

    def run(self, x: Tensor, score: ScoreFn, need: Need) -> Outputs:
        """One forward pass (and a backward pass when ``need`` asks for gradients)."""
        ...

    def forward(self, x: Tensor, *, chunk_size: int | None = None, bulk: bool = False) -> Tensor:
        """Outputs (logits) without gradients, batched in chunks; ``bulk``: many passes follow."""
        ...

    def layer_names(self) -> Sequence[str]:
        """Names of the model's layers that can be captured."""
        ...

    @property
    def device(self) -> object:
        """Where inputs must live."""
        ...
