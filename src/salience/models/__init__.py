"""Open a model named by the user, from anywhere, with its preprocessing and class names.

The command line, the server and the batch runner name models by a string; this package turns
that string into an adapter, a display name, an input preset and the class names. A model is:

- a bundled model's name (``efficientnet_lite0``; ``salience models`` lists them);
- a Python factory ``package.module:function`` returning a ``torch.nn.Module`` or a Keras model,
  optionally with a weights file (``.safetensors``, or a ``.pth``/``.pt`` state dict read with
  ``weights_only=True``; Keras weights for a Keras model);
- a TorchScript file (``.pt``, ``torch.jit.save``) or a ``torch.export`` program (``.pt2``);
- a state dict file plus the factory that builds its architecture;
- a Keras 3 file (``.keras``, or a legacy ``.h5`` that Keras 3 reads), run on the torch backend;
- an ONNX file (``.onnx``), a black box.

Each format is a module here that registers a :class:`~salience.models.formats.ModelFormat`
(how a file of it is recognised, and its opener) when it is imported, below; a new format is
one new module and one import. A pickled full model (``torch.save(model)``) is refused unless
the caller trusts it: unpickling runs whatever code the file carries. No other format runs
Python from the file either, and a file that claims to unpack to far more than its size is
refused (:mod:`salience.models.safety`, ``docs/security.md``). A preset sidecar beside the file
(``net.preset.toml``, see :mod:`salience.models.presets`) describes the input; explicit options
override it.
"""

from __future__ import annotations

from salience.models import bundled, export, factory, keras, onnx, state_dict, torchscript
from salience.models import tensorflow as tensorflow_format  # noqa: F401 (registers it)
from salience.models.factory import call_factory, load_weights
from salience.models.formats import (
    FORMAT,
    FileHead,
    ModelFormat,
    Opened,
    formats,
    register_format,
)
from salience.models.loader import is_onnx, model_kind, open_model
from salience.models.options import LoadedModel, LoadOptions
from salience.models.safety import check_unpacked_size, unpacked_size

BUNDLED = bundled.KIND
FACTORY = factory.KIND
KERAS = keras.KIND
EXPORT = export.KIND
TORCHSCRIPT = torchscript.KIND
TORCH_FILE = state_dict.KIND
ONNX = onnx.KIND

__all__ = [
    "BUNDLED",
    "EXPORT",
    "FACTORY",
    "FORMAT",
    "KERAS",
    "ONNX",
    "TORCHSCRIPT",
    "TORCH_FILE",
    "FileHead",
    "LoadOptions",
    "LoadedModel",
    "ModelFormat",
    "Opened",
    "call_factory",
    "check_unpacked_size",
    "formats",
    "is_onnx",
    "load_weights",
    "model_kind",
    "open_model",
    "register_format",
    "unpacked_size",
]
