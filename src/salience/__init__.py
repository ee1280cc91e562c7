"""salience: compute, show, compare and check saliency maps of neural networks."""

from salience import methods as _methods  # noqa: F401  (registers the explainers)
from salience.adapters import TorchAdapter
from salience.api import explain, make_explainer
from salience.explanation import Explanation
from salience.methods import (
    Explainer,
    Gradient,
    GradientXInput,
    GuidedBackprop,
    IntegratedGradients,
    SmoothGrad,
    VarGrad,
)
from salience.registry import available

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "Explanation",
    "Gradient",
    "GradientXInput",
    "GuidedBackprop",
    "IntegratedGradients",
    "SmoothGrad",
    "TorchAdapter",
    "VarGrad",
    "__version__",
    "available",
    "explain",
    "make_explainer",
]
