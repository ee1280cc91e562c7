"""Any model a caller gives, as the adapter that runs it: a model object, or a path or a name.

This is what :func:`salience.explain`, the explainers and the evaluations call on their
``model`` argument. Model objects are wrapped by :func:`salience.adapters.as_adapter`; a path or
a name is opened by :mod:`salience.models`, imported only then (it reads presets and images,
which explaining a model object never needs).
"""

from __future__ import annotations

import os
from typing import Any

from salience.adapters.dispatch import as_adapter


def adapter_for(model: object) -> Any:
    """The adapter that runs ``model``: a model object or adapter, or a model's path or name.

    A path to an ``.onnx`` file gets an :class:`~salience.adapters.onnx.OnnxAdapter` (a black
    box: scores only), any other path or name the adapter
    :func:`salience.models.open_model` opens it with.
    """
    if not isinstance(model, str | os.PathLike):
        return as_adapter(model)
    path = os.fspath(model)
    if path.lower().endswith(".onnx"):
        from salience.adapters.onnx import OnnxAdapter

        return OnnxAdapter(path)
    from salience.models import open_model

    return open_model(path).adapter


__all__ = ["adapter_for"]
