"""Models built by the user's code, ``package.module:function``, with an optional weights file.

The weights are a state dict (``.safetensors``, or a ``.pth``/``.pt`` read with
``weights_only=True``; a training checkpoint's ``state_dict`` is found inside it) or Keras
weights for a Keras model. A weights file that holds far more than the model needs is refused
before it is read (:func:`salience.models.safety.check_checkpoint_size`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salience.errors import (
    InvalidInputError,
    MissingFileError,
    MissingPackageError,
    NotFoundError,
    UnsupportedError,
    first_line,
)
from salience.models.channels import conv_input_channels
from salience.models.formats import ModelFormat, Opened, no_layout, register_format
from salience.models.presets import fallback_preset
from salience.models.safety import check_checkpoint_size, check_unpacked_size
from salience.models.state_dict import read_torch_file

if TYPE_CHECKING:
    from salience.models.options import LoadOptions
    from salience.models.presets import PresetOverrides

KIND = "factory"
FACTORY_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def _claims_name(model: str, options: LoadOptions, exists: bool) -> bool:
    """``package.module:function``, or any file when a factory is given (it holds weights)."""
    return (not exists and bool(FACTORY_PATTERN.fullmatch(model.strip()))) or (
        options.factory is not None
    )


def _weights_file(model: str, options: LoadOptions) -> str | None:
    return model if options.factory is not None else options.weights


def open_factory(
    model: str, options: LoadOptions, settings: PresetOverrides, *, fuse: bool = True
) -> Opened:
    """Build the factory's model and load its weights (``model`` is the factory, or the weights
    of ``options.factory``)."""
    from salience.adapters.keras import KerasAdapter, is_keras_model
    from salience.adapters.torch import TorchAdapter

    if FACTORY_PATTERN.fullmatch(model.strip()) and options.factory is not None:
        raise InvalidInputError(f"give the factory once: {model} or factory={options.factory}")
    spec, weights = (options.factory, model) if options.factory else (model, options.weights)
    built = call_factory(spec)
    if weights is not None:
        load_weights(built, weights, trust_pickle=options.trust_pickle)
    name = Path(weights).name if weights is not None else spec
    if is_keras_model(built):
        adapter = KerasAdapter(built, layout=settings.layout)
        return Opened(
            adapter, name, fallback_preset(adapter.input_size(), adapter.input_channels())
        )
    no_layout(settings, name)
    return Opened(
        TorchAdapter(built, fuse=fuse), name, fallback_preset(None, conv_input_channels(built))
    )


def call_factory(spec: str) -> Any:
    """Import ``package.module:function`` and call it with no arguments; return the model."""
    import torch

    from salience.adapters.keras import is_keras_model

    if not FACTORY_PATTERN.fullmatch(spec.strip()):
        raise InvalidInputError(f"a factory is written package.module:function, got {spec!r}")
    module_name, _, attribute = spec.strip().partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise MissingPackageError(
            f"cannot import {module_name} for the factory {spec} ({first_line(error)}); install "
            "it or add its folder to PYTHONPATH"
        ) from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise NotFoundError(f"{module_name} has no {attribute} (the factory {spec})")
        target = getattr(target, part)
    if not callable(target):
        raise UnsupportedError(f"the factory {spec} is a {type(target).__name__}, not a function")
    built = target()
    if not (isinstance(built, torch.nn.Module) or is_keras_model(built)):
        raise UnsupportedError(
            f"the factory {spec} returned a {type(built).__name__}; it must return a "
            "torch.nn.Module or a Keras model"
        )
    return built


def load_weights(model: Any, path: str, *, trust_pickle: bool = False) -> None:
    """Load a weights file into a freshly built ``model`` (a torch module or a Keras model).

    Raises
    ------
    ValueError
        When the file's tensors do not fit the model (missing, unexpected or mis-shaped keys),
        or when it holds far more than the model needs (see
        :func:`~salience.models.safety.check_unpacked_size` and ``CHECKPOINT_RATIO``), which
        is refused before anything is read.
    """
    from salience.adapters.keras import is_keras_model

    name = Path(path).name
    if not Path(path).is_file():
        raise MissingFileError(f"no weights file {path}")
    check_unpacked_size(path)
    if is_keras_model(model):
        try:
            model.load_weights(path)
        except Exception as error:
            raise InvalidInputError(
                f"{name} does not fit the Keras model ({first_line(error)}); save it with "
                "model.save_weights('model.weights.h5') from the same architecture"
            ) from error
        return
    check_checkpoint_size(
        path, sum(t.numel() * t.element_size() for t in model.state_dict().values())
    )
    state = read_torch_file(path, trust_pickle=trust_pickle)
    if not isinstance(state, Mapping):
        raise InvalidInputError(
            f"{name} holds a whole model, not weights; open it without a factory"
        )
    state = _unwrapped_state(state)
    own = model.state_dict()
    if all(key.startswith("module.") for key in state) and state:  # saved from DataParallel
        state = {key.removeprefix("module."): value for key, value in state.items()}
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and hasattr(state[key], "shape") and state[key].shape != own[key].shape
    ]
    problems = [
        f"{label} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", mismatched),
        )
        if keys
    ]
    if problems:
        raise InvalidInputError(
            f"{name} does not fit the factory's model: {'; '.join(problems)}; check that the "
            "factory builds the architecture the weights were saved from"
        )
    model.load_state_dict(state, strict=True)


def _unwrapped_state(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint (``{"state_dict": {...}, "epoch": 3}``)."""
    import torch

    if all(isinstance(value, torch.Tensor) for value in state.values()):
        return state
    for key in _STATE_DICT_KEYS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and all(
            isinstance(value, torch.Tensor) for value in inner.values()
        ):
            return inner
    return state


register_format(
    ModelFormat(
        kind=KIND,
        open=open_factory,
        claims_name=_claims_name,
        model_file=_weights_file,
        options=frozenset({"weights"}),
        rank=1,  # after the bundled models' names
    )
)

__all__ = ["FACTORY_PATTERN", "call_factory", "load_weights", "open_factory"]
