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
    "explain_all": "salience.api",
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
    "AblationCAM": "salience.methods",
    "EigenCAM": "salience.methods",
    "GradCAM": "salience.methods",
    "GradCAMPlusPlus": "salience.methods",
    "GuidedGradCAM": "salience.methods",
    "HiResCAM": "salience.methods",
    "LayerCAM": "salience.methods",
    "ScoreCAM": "salience.methods",
    "Occlusion": "salience.methods",
    "RISE": "salience.methods",
    "XGradCAM": "salience.methods",
    "available": "salience.registry",
}

_SUBMODULES = frozenset(
    {"adapters", "api", "images", "methods", "postprocess", "registry", "targets", "viz", "zoo"}
)

__all__ = [
    "RISE",
    "AblationCAM",
    "EigenCAM",
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "Gradient",
    "GradientXInput",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "IntegratedGradients",
    "LayerCAM",
    "Occlusion",
    "ScoreCAM",
    "SmoothGrad",
    "TorchAdapter",
    "VarGrad",
    "XGradCAM",
    "__version__",
    "available",
    "explain",
    "explain_all",
    "load_model",
    "make_explainer",
]

if TYPE_CHECKING:
    from salience.adapters.torch import TorchAdapter
    from salience.api import explain, explain_all, make_explainer
    from salience.explanation import Explanation
    from salience.methods import (
        RISE,
        AblationCAM,
        EigenCAM,
        Explainer,
        GradCAM,
        GradCAMPlusPlus,
        Gradient,
        GradientXInput,
        GuidedBackprop,
        GuidedGradCAM,
        HiResCAM,
        IntegratedGradients,
        LayerCAM,
        Occlusion,
        ScoreCAM,
        SmoothGrad,
        VarGrad,
        XGradCAM,
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
