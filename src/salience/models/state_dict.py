"""PyTorch files: state dicts (``.pth``, ``.pt``, ``.safetensors``) and pickled full models.

A state dict is read with ``weights_only=True`` (or by safetensors) and needs the factory that
builds its architecture (:mod:`salience.models.factory`). A pickled full model
(``torch.save(model)``) is refused unless the caller trusts it: unpickling runs whatever code
the file carries.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salience.errors import InvalidInputError, MissingPackageError, first_line
from salience.models.channels import conv_input_channels
from salience.models.formats import (
    FileHead,
    ModelFormat,
    Opened,
    no_layout,
    register_format,
)
from salience.models.presets import fallback_preset

if TYPE_CHECKING:
    from salience.models.options import LoadOptions
    from salience.models.presets import PresetOverrides

KIND = "torch file"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors")
SAFE_SAVING = (
    "save the weights instead (torch.save(model.state_dict(), 'model.pth') or safetensors) and "
    "open them with --factory package.module:function, or save the model with torch.jit.save "
    "or torch.export"
)


def open_torch_file(
    path: str, options: LoadOptions, settings: PresetOverrides, *, fuse: bool = True
) -> Opened:
    """A pickled full model (trusted only); a state dict is refused with the way to open it."""
    from salience.adapters.torch import TorchAdapter

    name = Path(path).name
    no_layout(settings, name)
    loaded = read_torch_file(path, trust_pickle=options.trust_pickle)
    if isinstance(loaded, Mapping):
        raise InvalidInputError(
            f"{name} holds weights only (a state dict); name the code that builds the model: "
            "--factory package.module:function (factory= in Python)"
        )
    return Opened(
        TorchAdapter(loaded, fuse=fuse), name, fallback_preset(None, conv_input_channels(loaded))
    )


def read_torch_file(path: str, *, trust_pickle: bool) -> Any:
    """A safetensors file or ``torch.load`` with ``weights_only=True`` (or a trusted pickle)."""
    import torch

    name = Path(path).name
    if Path(path).suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise MissingPackageError(
                "safetensors files need the safetensors package: pip install "
                "'salience[safetensors]'"
            ) from error
        try:
            return load_file(path, device="cpu")
        except Exception as error:
            raise InvalidInputError(
                f"{name} cannot be read as safetensors ({first_line(error)}); it may be "
                "truncated: save it again with safetensors.torch.save_file"
            ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error) and "GLOBAL" not in str(error):
            raise _unreadable(name, error) from error
        if not trust_pickle:
            raise InvalidInputError(
                f"{name} is a pickled model: loading it runs whatever code the file carries "
                f"(arbitrary code execution). {SAFE_SAVING[0].upper()}{SAFE_SAVING[1:]}; if you "
                "trust the file, pass --trust-pickle (trust_pickle=True)"
            ) from error
    except Exception as error:
        raise _unreadable(name, error) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise InvalidInputError(
            f"{name} is a pickled model that cannot be unpickled here ({first_line(error)}); "
            f"the code of its classes must be importable, or {SAFE_SAVING}"
        ) from error


def _unreadable(name: str, error: BaseException) -> InvalidInputError:
    return InvalidInputError(
        f"{name} is not a PyTorch file torch can read ({first_line(error)}); it may be "
        "truncated or of another format: save it again (torch.save, torch.jit.save, "
        "safetensors)"
    )


def _recognises(head: FileHead) -> bool:
    """Any other zip archive (``torch.save``), or a file with a PyTorch suffix."""
    return head.names is not None or head.suffix in TORCH_SUFFIXES


register_format(
    ModelFormat(
        kind=KIND,
        open=open_torch_file,
        recognises=_recognises,
        rank=1,  # after the archives of TorchScript, torch.export and Keras
        file_suffixes=(".pt", ".pth", ".safetensors"),
    )
)

__all__ = ["SAFE_SAVING", "TORCH_SUFFIXES", "open_torch_file", "read_torch_file"]
