"""Modified backward rules applied during a pass, without replacing any module.

Guided backpropagation (Springenberg et al. 2015) lets a gradient through a ReLU only where the
forward input was positive AND the incoming gradient is positive. The rule is installed with a
``TorchFunctionMode``, so it reaches ReLU-family modules (``nn.ReLU``, ``nn.ReLU6``) and functional
calls (``F.relu``, ``F.relu6``, ``torch.relu``, ``Tensor.relu``) alike, and disappears with
the context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from salience.errors import InvalidInputError


class _GuidedClamp(torch.autograd.Function):
    """``clamp(x, 0, upper)`` whose backward keeps only positive gradients where x is inside."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, upper: float | None) -> Tensor:
        inside = x > 0 if upper is None else (x > 0) & (x < upper)
        ctx.save_for_backward(inside)
        return x.clamp(min=0) if upper is None else x.clamp(0, upper)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (inside,) = ctx.saved_tensors
        return grad.clamp(min=0) * inside, None


def _relu(x: Tensor, *_: Any, **__: Any) -> Tensor:
    return _GuidedClamp.apply(x, None)


def _relu6(x: Tensor, *_: Any, **__: Any) -> Tensor:
    return _GuidedClamp.apply(x, 6.0)


def _hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0, *_: Any, **__: Any) -> Tensor:
    if min_val == 0.0:  # nn.ReLU6 is Hardtanh(0, 6)
        return _GuidedClamp.apply(x, max_val)
    return F.hardtanh(x, min_val, max_val)


_GUIDED: dict[Callable[..., Any], Callable[..., Tensor]] = {
    F.relu: _relu,
    F.relu_: _relu,
    torch.relu: _relu,
    torch.relu_: _relu,
    Tensor.relu: _relu,
    Tensor.relu_: _relu,
    F.relu6: _relu6,
    F.hardtanh: _hardtanh,
}


class GuidedReLUMode(TorchFunctionMode):
    """Within this mode every ReLU/ReLU6 call uses the guided backward rule."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        rule = _GUIDED.get(func)
        if rule is not None:
            return rule(*args, **kwargs)
        return func(*args, **kwargs)


def backward_rule_mode(rule: str | None) -> TorchFunctionMode | None:
    """The function mode that implements a named backward rule, or None for the plain gradient."""
    if rule is None:
        return None
    if rule == "guided_relu":
        return GuidedReLUMode()
    raise InvalidInputError(f"unknown backward rule {rule!r}")
