"""Single-pass methods: gradient (Simonyan et al. 2014), gradient × input, guided backprop."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from salience.methods.base import GradientExplainer, register_explainer
from salience.methods.options import Option

ABSOLUTE = Option(
    "absolute", bool, False, "|gradient| (Simonyan et al.) instead of the signed gradient"
)


@register_explainer("gradient")
class Gradient(GradientExplainer):
    """The gradient of the score with respect to the input (the "vanilla" saliency map).

    Parameters
    ----------
    model : torch.nn.Module or adapter
        The model to explain.
    absolute : bool
        Return ``|gradient|`` (Simonyan et al.) instead of the signed gradient.
    """

    paper = "Simonyan et al. 2014"
    options = (ABSOLUTE,)

    def __init__(self, model: object, *, absolute: bool = ABSOLUTE.default) -> None:
        super().__init__(model)
        self.absolute = ABSOLUTE.check(absolute)

    def params(self) -> dict[str, Any]:
        """Configuration."""
        return {"absolute": self.absolute}

    def combine(self, x: Tensor, grad: Tensor) -> Tensor:
        """Signed or absolute gradient."""
        return grad.abs() if self.absolute else grad


@register_explainer("gradient_x_input")
class GradientXInput(GradientExplainer):
    """Gradient times input: a first-order estimate of each feature's contribution."""

    paper = "Shrikumar et al. 2016"

    def combine(self, x: Tensor, grad: Tensor) -> Tensor:
        """``grad * x`` for every target."""
        return grad * x.unsqueeze(1)


@register_explainer("guided_backprop")
class GuidedBackprop(GradientExplainer):
    """Guided backpropagation: only positive gradients pass back through ReLUs.

    The rule reaches ReLU/ReLU6 modules and functional ``F.relu``/``F.relu6`` calls alike.
    """

    paper = "Springenberg et al. 2015"

    rule: ClassVar[str | None] = "guided_relu"

    def combine(self, x: Tensor, grad: Tensor) -> Tensor:
        """The guided gradient as it is."""
        return grad
