"""salience: compute, show, compare and check saliency maps of neural networks.

Names are imported on first use, so ``import salience`` stays cheap (it imports neither torch
nor any submodule) and the command-line tool can configure torch before it is loaded.

Each public name is written once, in the ``if TYPE_CHECKING:`` block below, as
``from module import Name as Name``. Type checkers and editors read that block as it stands
(the redundant alias marks a re-export of a typed package). At run time the package reads the
same block from its own source with :mod:`ast`, without importing anything, and builds from it
``__all__`` and the table that :func:`__getattr__` uses to import a name when it is first
used. A line ``from salience import name as name`` there names a submodule: it is an attribute
of the package, loaded on first use too, but not part of ``from salience import *``.
"""

from __future__ import annotations

import ast
import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str | None]]
"""Each lazy name (public names and submodules) -> (module to import, attribute or None)."""


def _lazy_names() -> tuple[dict[str, tuple[str, str | None]], dict[str, tuple[str, str | None]]]:
    """The names of the ``TYPE_CHECKING`` block: (public names, submodules), each mapped to
    (module to import, attribute of it or ``None`` for the module itself)."""
    source = __loader__.get_source(__name__) if __loader__ is not None else None
    if source is None:
        from salience.errors import MissingFileError

        raise MissingFileError(
            "salience cannot read its own __init__.py; reinstall it from a wheel or an sdist"
        )
    names: dict[str, tuple[str, str | None]] = {}
    submodules: dict[str, tuple[str, str | None]] = {}
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.If) and ast.unparse(statement.test) == "TYPE_CHECKING":
            for line in statement.body:
                if not isinstance(line, ast.ImportFrom) or line.module is None:
                    continue
                for alias in line.names:
                    if line.module == __name__:
                        submodules[alias.name] = (f"{__name__}.{alias.name}", None)
                    else:
                        names[alias.name] = (line.module, alias.name)
    return names, submodules


if TYPE_CHECKING:
    from salience import adapters as adapters
    from salience import api as api
    from salience import errors as errors
    from salience import images as images
    from salience import methods as methods
    from salience import models as models
    from salience import postprocess as postprocess
    from salience import registry as registry
    from salience import targets as targets
    from salience import viz as viz
    from salience import zoo as zoo
    from salience.adapters.torch import TorchAdapter as TorchAdapter
    from salience.api import explain as explain
    from salience.api import explain_all as explain_all
    from salience.api import make_explainer as make_explainer
    from salience.errors import SalienceError as SalienceError
    from salience.explanation import Explanation as Explanation
    from salience.methods import RISE as RISE
    from salience.methods import AblationCAM as AblationCAM
    from salience.methods import EigenCAM as EigenCAM
    from salience.methods import Explainer as Explainer
    from salience.methods import FeatureAblation as FeatureAblation
    from salience.methods import GradCAM as GradCAM
    from salience.methods import GradCAMPlusPlus as GradCAMPlusPlus
    from salience.methods import Gradient as Gradient
    from salience.methods import GradientXInput as GradientXInput
    from salience.methods import GuidedBackprop as GuidedBackprop
    from salience.methods import GuidedGradCAM as GuidedGradCAM
    from salience.methods import HiResCAM as HiResCAM
    from salience.methods import IntegratedGradients as IntegratedGradients
    from salience.methods import LayerCAM as LayerCAM
    from salience.methods import Occlusion as Occlusion
    from salience.methods import ScoreCAM as ScoreCAM
    from salience.methods import SmoothGrad as SmoothGrad
    from salience.methods import VarGrad as VarGrad
    from salience.methods import XGradCAM as XGradCAM
    from salience.registry import available as available
    from salience.zoo import load_model as load_model

else:
    _PUBLIC, _SUBMODULES = _lazy_names()
    _EXPORTS = {**_PUBLIC, **_SUBMODULES}
    __all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'salience' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
