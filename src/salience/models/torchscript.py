"""TorchScript files (``torch.jit.save``), read after a check of the code they carry.

TorchScript code runs when the file is loaded (``__setstate__``) and on every forward: a
program of PyTorch operators, without Python, but the operators that read or write files
(:data:`~salience.models.safety.FILE_OPERATORS`), RPC and distributed operators and TorchBind
classes (native objects, also in the pickles) reach beyond the model; a file whose code uses
them is opened only when trusted.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from salience.errors import InvalidInputError, first_line
from salience.models.channels import conv_input_channels
from salience.models.formats import (
    FileHead,
    ModelFormat,
    Opened,
    no_layout,
    register_format,
)
from salience.models.presets import fallback_preset
from salience.models.safety import untrusted

if TYPE_CHECKING:
    from salience.models.options import LoadOptions
    from salience.models.presets import PresetOverrides

KIND = "torchscript"
_TORCHBIND = re.compile(r"torch\.classes")
_SCRIPT_REFUSED = re.compile(
    r"\b(from_file|save|load_tensor|rpc_async|rpc_sync|rpc_remote|c10d|_c10d_functional)\b"
    r"|torch\.classes"
)


def open_torchscript(
    path: str, options: LoadOptions, settings: PresetOverrides, *, fuse: bool = True
) -> Opened:
    """A :class:`~salience.adapters.program.ProgramAdapter` of the file's module."""
    import torch

    from salience.adapters.program import ProgramAdapter, ScriptedModule

    name = Path(path).name
    no_layout(settings, name)
    if not options.trust_pickle:
        check_scripted_archive(path)
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as error:
        raise InvalidInputError(
            f"{name} cannot be read as a TorchScript module ({first_line(error)}); it may be "
            "truncated: save it again with torch.jit.save"
        ) from error
    for parameter in module.parameters():  # our own copy: no graph for the weights
        parameter.requires_grad_(False)
    preset = fallback_preset(None, conv_input_channels(module))
    return Opened(ProgramAdapter(ScriptedModule(module, name)), name, preset)


def check_scripted_archive(path: str | Path) -> None:
    """Refuse a TorchScript file whose code reaches files, the network or TorchBind classes.

    The check reads the code and pickles, never the tensors' records.

    Raises
    ------
    UntrustedFileError
        When the code or a pickle names what it may not.
    """
    name = Path(path).name
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            in_code = "/code/" in entry.filename and entry.filename.endswith(".py")
            if not (in_code or entry.filename.endswith(".pkl")):
                continue
            text = archive.read(entry).decode("utf-8", errors="replace")
            if match := (_SCRIPT_REFUSED if in_code else _TORCHBIND).search(text):
                untrusted(name, f"its TorchScript code uses {match.group(0)}")


def _recognises(head: FileHead) -> bool:
    """A zip archive with TorchScript's constants or code."""
    return head.names is not None and any(
        n.endswith("/constants.pkl") or "/code/" in n for n in head.names
    )


register_format(
    ModelFormat(kind=KIND, open=open_torchscript, recognises=_recognises, file_suffixes=(".pt",))
)

__all__ = ["check_scripted_archive", "open_torchscript"]
