"""Saliency methods; importing this package registers them all."""

from salience.errors import InvalidInputError
from salience.methods.base import (
    EXPLAINER,
    Attribution,
    Explainer,
    GradientExplainer,
    SinglePassExplainer,
    attribute_shared,
    black_box_methods,
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
from salience.methods.feature_ablation import FeatureAblation
from salience.methods.gradient import Gradient, GradientXInput, GuidedBackprop
from salience.methods.integrated import IntegratedGradients
from salience.methods.noise import SmoothGrad, VarGrad
from salience.methods.options import Option, options_of
from salience.methods.perturbation import RISE, Occlusion
from salience.methods.score_cam import AblationCAM, ScoreCAM
from salience.registry import available, get


def flagged_options() -> list[tuple[Option, list[str]]]:
    """Every option with a flag (the CLI's and the form's), once, with the methods taking it.

    In the order the methods were registered; a method registered later brings its options too.

    Raises
    ------
    InvalidInputError
        When two different options claim one flag.
    """
    found: dict[str, tuple[Option, list[str]]] = {}
    for method in available(EXPLAINER, sort=False):
        for option in options_of(get(EXPLAINER, method)).values():
            if option.flag is None:
                continue
            known, methods = found.setdefault(option.flag, (option, []))
            if known != option:
                raise InvalidInputError(
                    f"two options claim the flag --{option.flag}: {known.name} and "
                    f"{option.name} of {method}; give one another flag"
                )
            methods.append(method)
    return list(found.values())


def method_names(text: str) -> list[str]:
    """Methods named in ``text``: comma-separated, ``cams`` for every CAM; each name once.

    Raises
    ------
    LookupError
        For an unknown name, before any work is done.
    """
    names: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if name == "cams":
            names += [
                method
                for method in available(EXPLAINER, sort=False)
                if issubclass(get(EXPLAINER, method), CAMExplainer)
            ]
        elif name:
            get(EXPLAINER, name)  # unknown names fail before any work
            names.append(name)
    return list(dict.fromkeys(names))


__all__ = [
    "RISE",
    "AblationCAM",
    "Attribution",
    "CAMExplainer",
    "EigenCAM",
    "Explainer",
    "FeatureAblation",
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
    "black_box_methods",
    "flagged_options",
    "method_names",
]
