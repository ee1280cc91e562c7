"""The names of :mod:`salience.models` under their earlier module: opening a model by name or
file. New code imports :mod:`salience.models`."""

from __future__ import annotations

from salience.models import (
    BUNDLED,
    EXPORT,
    FACTORY,
    KERAS,
    ONNX,
    TORCH_FILE,
    TORCHSCRIPT,
    LoadedModel,
    LoadOptions,
    call_factory,
    check_unpacked_size,
    is_onnx,
    load_weights,
    model_kind,
    open_model,
    unpacked_size,
)
from salience.models.safety import CHECKPOINT_RATIO, UNPACKED_RATIO, UNPACKED_SLACK
from salience.models.state_dict import SAFE_SAVING, TORCH_SUFFIXES

__all__ = [
    "BUNDLED",
    "CHECKPOINT_RATIO",
    "EXPORT",
    "FACTORY",
    "KERAS",
    "ONNX",
    "SAFE_SAVING",
    "TORCHSCRIPT",
    "TORCH_FILE",
    "TORCH_SUFFIXES",
    "UNPACKED_RATIO",
    "UNPACKED_SLACK",
    "LoadOptions",
    "LoadedModel",
    "call_factory",
    "check_unpacked_size",
    "is_onnx",
    "load_weights",
    "model_kind",
    "open_model",
    "unpacked_size",
]
