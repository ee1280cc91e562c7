"""Saliency methods; importing this package registers them all."""

from salience.methods.base import Attribution, Explainer, GradientExplainer
from salience.methods.gradient import Gradient, GradientXInput, GuidedBackprop
from salience.methods.integrated import IntegratedGradients
from salience.methods.noise import SmoothGrad, VarGrad

__all__ = [
    "Attribution",
    "Explainer",
    "Gradient",
    "GradientExplainer",
    "GradientXInput",
    "GuidedBackprop",
    "IntegratedGradients",
    "SmoothGrad",
    "VarGrad",
]
