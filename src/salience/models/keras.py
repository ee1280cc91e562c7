"""Keras 3 files (``.keras``, or a legacy ``.h5`` that Keras 3 reads), run on the torch backend.

A file is loaded in Keras' safe mode (no Lambda layer's code runs) unless the caller trusts it,
and only by a Keras release that fixed the published ways around safe mode (``SAFE_KERAS``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salience.errors import InvalidInputError, first_line
from salience.models.formats import FileHead, ModelFormat, Opened, register_format
from salience.models.presets import fallback_preset
from salience.models.safety import HDF5_SIGNATURE

if TYPE_CHECKING:
    from salience.models.options import LoadOptions
    from salience.models.presets import PresetOverrides

KIND = "keras"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAFE_KERAS = (3, 13, 2)
"""The Keras release by which the published flaws of loading in safe mode were fixed: legacy
``.h5`` files ignoring it, config files naming functions that turn it off, untrusted
deserialization, HDF5 weights whose metadata asks for unbounded memory."""


def open_keras(
    path: str, options: LoadOptions, settings: PresetOverrides, *, fuse: bool = True
) -> Opened:
    """A :class:`~salience.adapters.keras.KerasAdapter` of the file's model."""
    from salience.adapters.keras import KerasAdapter

    model = load_keras_model(path, trust_code=options.trust_pickle)
    adapter = KerasAdapter(model, layout=settings.layout)
    preset = fallback_preset(adapter.input_size(), adapter.input_channels())
    return Opened(adapter, Path(path).name, preset)


def load_keras_model(
    path: str | os.PathLike[str], *, trust_code: bool = False, backend: str = "torch"
) -> Any:
    """Load a ``.keras`` file (or a legacy ``.h5`` that Keras 3 reads) without compiling it.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.
    trust_code : bool
        Allow Lambda layers, whose Python code the file carries (Keras' ``safe_mode=False``).
    backend : {"torch", "tensorflow"}
        The Keras backend the model runs on.
    """
    from salience.adapters.keras import import_keras

    keras = import_keras(backend)
    name = Path(path).name
    version = tuple(int(part) for part in re.findall(r"\d+", keras.__version__)[:3])
    if not trust_code and version < SAFE_KERAS:
        raise InvalidInputError(
            f"{name} is not opened: Keras {keras.__version__} lets a model file run code even "
            f"in safe mode (fixed in Keras {'.'.join(map(str, SAFE_KERAS))}); upgrade keras, or "
            "pass --trust-pickle (trust_pickle=True) if you trust the file"
        )
    try:
        return keras.saving.load_model(os.fspath(path), compile=False, safe_mode=not trust_code)
    except Exception as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise InvalidInputError(
                f"{name} holds Python code (a Lambda layer) that would run when loading it; if "
                "you trust the file, pass --trust-pickle (trust_pickle=True)"
            ) from error
        raise InvalidInputError(
            f"{name} cannot be read as a Keras 3 model ({first_line(error)}); save it again with "
            "model.save('model.keras')"
        ) from error


def _recognises(head: FileHead) -> bool:
    """A Keras 3 archive (its config and weights) or an HDF5 file."""
    if head.names is not None:
        return "config.json" in head.names and any(n.endswith("weights.h5") for n in head.names)
    return head.head == HDF5_SIGNATURE


register_format(
    ModelFormat(
        kind=KIND,
        open=open_keras,
        suffixes=KERAS_SUFFIXES,
        recognises=_recognises,
        file_suffixes=(".keras", ".h5"),
    )
)

__all__ = ["KERAS_SUFFIXES", "SAFE_KERAS", "load_keras_model", "open_keras"]
