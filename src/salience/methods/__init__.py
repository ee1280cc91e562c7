"""Saliency methods; importing this package registers them all."""

from salience.methods.base import (
    Attribution,
    Explainer,
    GradientExplainer,
    SinglePassExplainer,
    attribute_shared,
)
from salience.methods.cam import (
    CAMExplainer,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from salience.methods.gradient import Gradient, GradientXInput, GuidedBackprop
from salience.methods.integrated import IntegratedGradients
from salience.methods.noise import SmoothGrad, VarGrad
from salience.methods.perturbation import RISE, Occlusion
from salience.methods.score_cam import AblationCAM, ScoreCAM

__all__ = [
    "RISE",
    "AblationCAM",
    "Attribution",
    "CAMExplainer",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "Gradient",
    "GradientExplainer",
    "GradientXInput",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "IntegratedGradients",
    "LayerCAM",
    "Occlusion",
    "ScoreCAM",
    "SinglePassExplainer",
    "SmoothGrad",
    "VarGrad",
    "XGradCAM",
    "attribute_shared",
]
