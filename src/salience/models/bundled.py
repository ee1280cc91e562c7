"""The models bundled with salience (:mod:`salience.zoo`), opened by name.

Their preprocessing and class names are known, so no option applies to them. They run like any
user's module: long perturbation runs on a safely captured program where it can be built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from salience.models.factory import FACTORY_PATTERN
from salience.models.formats import ModelFormat, Opened, register_format
from salience.registry import available

if TYPE_CHECKING:
    from salience.models.options import LoadOptions
    from salience.models.presets import PresetOverrides

KIND = "bundled"


def _claims_name(model: str, options: LoadOptions, exists: bool) -> bool:
    """A registered bundled model's name, or any bare name that names no factory or file
    (the registry then says which names it knows)."""
    from salience.zoo import MODEL

    if exists:
        return False
    if model.strip().lower() in available(MODEL):
        return True
    path = Path(model)
    bare = not path.suffix and len(path.parts) == 1
    return bare and options.factory is None and not FACTORY_PATTERN.fullmatch(model.strip())


def open_bundled(
    model: str, options: LoadOptions, settings: PresetOverrides, *, fuse: bool = True
) -> Opened:
    """The bundled model ``model``, its long runs captured unless ``fuse`` is False."""
    from salience.adapters.torch import TorchAdapter
    from salience.zoo import load_model, model_spec

    spec = model_spec(model)
    adapter = TorchAdapter(load_model(spec.name), fuse=fuse)
    return Opened(adapter, spec.name, spec.preset, spec.class_names())


register_format(
    ModelFormat(
        kind=KIND,
        open=open_bundled,
        claims_name=_claims_name,
        model_file=lambda _model, _options: None,
        described=True,
    )
)
