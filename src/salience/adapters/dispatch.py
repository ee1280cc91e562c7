"""Which adapter runs a model object: the one place that knows every adapter class.

Opening a model *file* or a bundled model's *name* is the job of the layer above
(:func:`salience.opening.adapter_for`, :func:`salience.models.open_model`): adapters only run
models, they never read them from disk by name.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from salience.adapters.base import BlackBoxAdapter
from salience.adapters.keras import KerasAdapter, is_keras_model
from salience.adapters.program import ProgramAdapter
from salience.adapters.tensorflow import TensorFlowAdapter, is_tensorflow_model
from salience.adapters.torch import TorchAdapter
from salience.errors import UnsupportedError


def as_adapter(model: object) -> Any:
    """Wrap a model object in the right adapter; an adapter (any
    :class:`~salience.adapters.base.BlackBoxAdapter`) is returned as it is.

    A Keras model on TensorFlow (``tf_keras``, or Keras 3 imported on the TensorFlow backend)
    gets a :class:`~salience.adapters.tensorflow.TensorFlowAdapter`, another Keras model a
    :class:`~salience.adapters.keras.KerasAdapter`, a TorchScript module
    or ``torch.export`` program a :class:`~salience.adapters.program.ProgramAdapter`, any other
    ``torch.nn.Module`` a :class:`~salience.adapters.torch.TorchAdapter`.

    Raises
    ------
    TypeError
        For a path or name (open it with :func:`salience.opening.adapter_for`) and for anything
        that is not a model.
    """
    if isinstance(model, BlackBoxAdapter):
        return model
    if is_tensorflow_model(model):
        return TensorFlowAdapter(model)
    if is_keras_model(model):
        return KerasAdapter(model)
    if isinstance(model, torch.jit.ScriptModule | torch.export.ExportedProgram):
        return ProgramAdapter(model)
    if isinstance(model, nn.Module):
        return TorchAdapter(model)
    if isinstance(model, str | os.PathLike):
        raise UnsupportedError(
            f"as_adapter wraps model objects, not the path or name {os.fspath(model)!r}: open it "
            "with salience.opening.adapter_for (salience.explain and the explainers take paths)"
        )
    raise UnsupportedError(
        f"cannot explain a {type(model).__name__}: pass a torch.nn.Module, a Keras or tf.keras "
        "model or the path of a model file"
    )
