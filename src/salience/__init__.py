"""salience: compute, show, compare and check saliency maps of neural networks.

Attributes are imported on first use, so ``import salience`` stays cheap and the command-line
tool can configure torch before it is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "explain": "salience.api",
    "make_explainer": "salience.api",
    "load_model": "salience.zoo",
    "Explanation": "salience.explanation",
    "TorchAdapter": "salience.adapters.torch",
    "Explainer": "salience.methods",
    "Gradient": "salience.methods",
    "GradientXInput": "salience.methods",
    "GuidedBackprop": "salience.methods",
    "IntegratedGradients": "salience.methods",
    "SmoothGrad": "salience.methods",
    "VarGrad": "salience.methods",
    "available": "salience.registry",
}

_SUBMODULES = frozenset(
    {"adapters", "images", "methods", "postprocess", "registry", "targets", "viz", "zoo"}
)

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
    "load_model",
    "make_explainer",
]

if TYPE_CHECKING:
    from salience.adapters.torch import TorchAdapter
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
    from salience.zoo import load_model


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"salience.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'salience' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
