"""The contract between saliency methods and a framework: what a method may ask of a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from salience.errors import InvalidInputError, SalienceError, UnsupportedError

if TYPE_CHECKING:
    from salience.adapters.layers import LayerInfo, LayerLike
    from salience.adapters.randomize import RandomizationUnit

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
    if bool(torch.isfinite(x.sum())):  # NaN and ±inf reach the sum: one cheap pass suffices
        return 0
    finite = torch.isfinite(x)  # or the sum overflowed: count exactly
    return 0 if bool(finite.all()) else int(finite.numel() - finite.sum())


def check_batch(x: object) -> Tensor:
    """``x`` itself when it is a tensor batch ``(N, ...)`` with ``N >= 1``.

    Raises
    ------
    UnsupportedError
        When ``x`` is not a tensor (a ``TypeError``).
    InvalidInputError
        When ``x`` has no batch dimension or an empty one (a ``ValueError``).
    """
    if not isinstance(x, Tensor):
        raise UnsupportedError(f"expected a torch.Tensor input, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise InvalidInputError(
            f"expected a batch (N, ...) with N >= 1, got shape {tuple(x.shape)}"
        )
    return x


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
class BlackBoxAdapter(Protocol):
    """A model that gives its outputs: what every adapter offers, and all a black box offers.

    The capabilities below extend it; each is a structural type, so ``isinstance(adapter,
    DifferentiableAdapter)`` says whether an adapter has it (an ONNX model is a black box and
    nothing more). Methods that only read outputs (occlusion, RISE) take any black box.
    """

    is_adapter: bool

    @property
    def device(self) -> object:
        """Where inputs must live."""
        ...

    def prepare_input(self, x: Tensor) -> Tensor:
        """The batch moved to the model's device and dtype, validated."""
        ...

    def forward(self, x: Tensor, *, chunk_size: int | None = None, bulk: bool = False) -> Tensor:
        """Outputs (logits) without gradients, batched in chunks; ``bulk``: many passes follow."""
        ...


@runtime_checkable
class DifferentiableAdapter(BlackBoxAdapter, Protocol):
    """A model that runs one pass with gradients (:class:`Need`): input and layer gradients.

    ``model`` is what runs; explainers of the same model share their passes.
    """

    model: object

    def run(self, x: Tensor, score: ScoreFn, need: Need) -> Outputs:
        """One forward pass (and a backward pass when ``need`` asks for gradients)."""
        ...


@runtime_checkable
class LayerAccessAdapter(BlackBoxAdapter, Protocol):
    """A model whose layers can be listed, chosen and scaled (CAMs, ``salience layers``)."""

    def layer_names(self) -> Sequence[str]:
        """Names of the model's layers that can be captured."""
        ...

    def layer_table(self, x: Tensor) -> list[LayerInfo]:
        """Every layer the model calls on inputs shaped like ``x``, with its output shape."""
        ...

    def resolve_layer(self, layer: LayerLike, x: Tensor) -> str:
        """The name of ``layer`` (None or ``"auto"``: the last spatial feature map)."""
        ...

    def scaled_layer_outputs(
        self, x: Tensor, layer: str, scales: Tensor, *, channel_dim: int = 1
    ) -> Tensor:
        """One sample's outputs with ``layer``'s channels scaled by each row of ``scales``."""
        ...


@runtime_checkable
class LayerGradientAdapter(DifferentiableAdapter, LayerAccessAdapter, Protocol):
    """Gradients and layer access together: what the CAMs need."""


@runtime_checkable
class RandomizableAdapter(BlackBoxAdapter, Protocol):
    """A model whose weights can be re-initialized, on a copy (the randomization test)."""

    def randomization_units(
        self, x: Tensor, layers: Sequence[str] | None = None
    ) -> list[RandomizationUnit]:
        """The blocks a randomization test re-initializes, from the top down."""
        ...

    def randomized(self, units: Sequence[RandomizationUnit], *, seed: int) -> RandomizableAdapter:
        """An adapter of a copy of the model with ``units`` re-initialized (seeded)."""
        ...


CAPABILITIES: tuple[type, ...] = (
    BlackBoxAdapter,
    DifferentiableAdapter,
    LayerAccessAdapter,
    RandomizableAdapter,
)
"""Every capability an adapter may have, the most basic first."""


def check_scaling_arguments(x: Tensor, scales: Tensor) -> None:
    """The arguments of ``scaled_layer_outputs``: one sample ``(1, ...)`` and ``(B, C)`` scales.

    Raises
    ------
    InvalidInputError
        For a batch of several samples, or scales of another rank.
    """
    if x.shape[0] != 1:
        raise InvalidInputError(f"expected one sample (1, ...), got a batch of {x.shape[0]}")
    if scales.ndim != 2:
        raise InvalidInputError(f"scales must be (B, C), got shape {tuple(scales.shape)}")
