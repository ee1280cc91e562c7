"""Open a model by name or file: find its format, read its sidecar, call the format's opener."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salience.errors import InvalidInputError
from salience.images import ImagePreset
from salience.models.formats import model_format
from salience.models.onnx import KIND as ONNX
from salience.models.options import LoadedModel, LoadOptions
from salience.models.presets import PresetOverrides, find_sidecar, read_labels, read_sidecar
from salience.models.safety import check_unpacked_size

ONLY_FOR = {
    "weights": "weights go with a factory (package.module:function), not with the",
    "input_name": "an input name (--input-name) is for ONNX models, not the",
}
"""How an option that only some formats take is refused by the others."""


def model_kind(model: str, options: LoadOptions | None = None) -> str:
    """What ``model`` names: the kind of its format (``bundled``, ``factory``, ``onnx``,
    ``keras``, ``torchscript``, ``export``, ``torch file`` (a state dict or a pickled model), or
    a format registered since).

    Raises
    ------
    FileNotFoundError
        For a path that does not exist and names nothing else.
    """
    return model_format(model, options or LoadOptions()).kind


def is_onnx(model: str) -> bool:
    """Whether ``model`` names an ONNX file rather than another kind of model."""
    try:
        return model_kind(model) == ONNX
    except OSError:
        return model.lower().endswith(".onnx")


def open_model(model: str, options: LoadOptions | None = None, *, fuse: bool = True) -> LoadedModel:
    """Open the model named by ``model``, with its preprocessing and class names.

    Parameters
    ----------
    model : str
        A bundled model name, ``package.module:function``, or a model file (see
        :mod:`salience.models` for the formats).
    options : LoadOptions, optional
        How to open it, and overrides of its preset sidecar and metadata.
    fuse : bool
        Run long perturbation passes of PyTorch models on a safely captured program where one
        can be built (``salience.adapters.fused``).
    """
    options = options or LoadOptions()
    found = model_format(model, options)
    if found.described:
        if given := options.given():
            raise InvalidInputError(
                f"{', '.join(given)} apply to model files and factories, not to the {found.kind} "
                f"model {model} (its preprocessing is known)"
            )
        opened = found.open(model, options, PresetOverrides(), fuse=fuse)
        return LoadedModel(opened.adapter, opened.name, opened.preset, list(opened.class_names))
    for option, refusal in ONLY_FOR.items():
        if getattr(options, option) is not None and option not in found.options:
            raise InvalidInputError(f"{refusal} {found.kind} {model}")
    model_file = found.model_file(model, options)
    if model_file and Path(model_file).is_file():
        check_unpacked_size(model_file)
    settings = options.overrides().over(_sidecar(options, model_file))
    adapter, name, base, metadata_names = found.open(model, options, settings, fuse=fuse)
    preset = settings.apply(base) if settings.given() else base
    names = _class_names(adapter, name, preset, settings, metadata_names)
    return LoadedModel(adapter, name, preset, names)


def _sidecar(options: LoadOptions, model_file: str | None) -> PresetOverrides:
    if options.preset is not None:
        return read_sidecar(options.preset)
    found = find_sidecar(model_file) if model_file and Path(model_file).is_file() else None
    return read_sidecar(found) if found is not None else PresetOverrides()


def _class_names(
    adapter: Any,
    name: str,
    preset: ImagePreset,
    settings: PresetOverrides,
    metadata_names: Sequence[str] | None,
) -> list[str]:
    """Names from the labels setting, else the model's metadata, else ``class i``.

    The model runs once on a blank image of the preset's size: that counts its outputs and
    checks that the preset fits it.
    """
    import torch

    crop = preset.crop if preset.crop is not None else (224, 224)
    height, width = (crop, crop) if isinstance(crop, int) else crop
    blank = preset.normalize(torch.zeros(1, 3, height, width))
    outputs = adapter.forward(blank)
    count = int(outputs.shape[-1]) if outputs.ndim >= 2 else 1
    labels = settings.labels
    if isinstance(labels, Path):
        names, source = list(read_labels(labels)), str(labels)
    elif labels is not None:
        names, source = list(labels), "the preset's labels"
    elif metadata_names:
        names, source = list(metadata_names), f"the metadata of {name}"
    else:
        return [f"class {i}" for i in range(count)]
    if len(names) != count:
        raise InvalidInputError(
            f"{source} names {len(names)} classes but {name} has {count} outputs"
        )
    return names


__all__ = ["is_onnx", "model_kind", "open_model"]
