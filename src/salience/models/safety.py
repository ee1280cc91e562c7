"""The bounds every model file is held to before it is read: what it may unpack to, and the
error for what would run code from it (``docs/security.md``)."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from typing import Any

from salience.errors import InvalidInputError, SalienceError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
UNPACKED_RATIO = 20
"""How many times its own size an archive (zip, HDF5) may unpack to, plus ``UNPACKED_SLACK``:
torch and Keras store tensors uncompressed, so only a forged file comes near it."""
UNPACKED_SLACK = 16 << 20
CHECKPOINT_RATIO = 4
"""How many times the model's own state a weights file may hold, plus ``UNPACKED_SLACK``: a
training checkpoint holds the weights, an optimizer's moments and little else."""
FILE_OPERATORS = frozenset({"aten::from_file", "aten::save", "debugprims::load_tensor"})
"""Operators that read or write a file named by the program (``torch.from_file(name,
shared=True)`` writes into it): a program from a file may not call them."""


class UntrustedFileError(SalienceError, ValueError):
    """A program file holds something that would run code from the file if it were opened."""


def untrusted(name: str, reason: str) -> None:
    """Refuse the file ``name`` for ``reason``: it would run code that only a trusted file may.

    Raises
    ------
    UntrustedFileError
        Always.
    """
    raise UntrustedFileError(
        f"{name} is not opened: {reason}, which salience runs only from a trusted file; export "
        "the model again from plain PyTorch layers, or pass --trust-pickle (trust_pickle=True) "
        "if you trust the file"
    )


def unpacked_size(path: str | Path) -> int:
    """The bytes a model file unpacks to, from its headers (nothing is decompressed).

    A zip counts its entries' declared sizes, an HDF5 file (or one inside the zip, as in a
    ``.keras`` file) its datasets' sizes; any other file its own size.

    Raises
    ------
    ValueError
        For an HDF5 dataset stored in another file (external or virtual storage), which would
        read that file into the model.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return sum(
                _hdf5_size(archive.open(entry), Path(path).name)
                if entry.filename.endswith(".h5")
                else entry.file_size
                for entry in archive.infolist()
            )
    with open(path, "rb") as file:
        if file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return _hdf5_size(path, Path(path).name)
    return Path(path).stat().st_size


def _hdf5_size(source: Any, name: str) -> int:
    if importlib.util.find_spec("h5py") is None:
        return 0  # Keras, which reads HDF5, is not installed either
    import h5py

    datasets: list[Any] = []
    try:
        store = h5py.File(source, "r")
    except OSError:
        return 0  # not HDF5 after all: the reader of its format says so
    with store:
        store.visititems(
            lambda _key, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None
        )
        for dataset in datasets:
            if dataset.external or dataset.is_virtual:
                raise InvalidInputError(
                    f"{name} stores {dataset.name} in another file (HDF5 external or virtual "
                    "storage), which would read that file into the model; save the model again "
                    "with model.save('model.keras')"
                )
        return sum(dataset.nbytes for dataset in datasets)


def check_unpacked_size(path: str | Path) -> None:
    """Refuse a file that claims to unpack to far more than its size (an archive bomb).

    Raises
    ------
    ValueError
        When the file unpacks to more than ``UNPACKED_RATIO`` times its size plus
        ``UNPACKED_SLACK``.
    """
    size = Path(path).stat().st_size
    unpacked = unpacked_size(path)
    if unpacked > UNPACKED_RATIO * size + UNPACKED_SLACK:
        raise InvalidInputError(
            f"{Path(path).name} claims to unpack to {size_text(unpacked)} from "
            f"{size_text(size)} (more than {UNPACKED_RATIO}× its size); a model file stores "
            "its tensors uncompressed: save the model again, without compressing the archive"
        )


def check_checkpoint_size(path: str | Path, own: int) -> None:
    """Refuse a weights file that holds far more than the ``own`` bytes of the model's state.

    Raises
    ------
    ValueError
        When it holds more than ``CHECKPOINT_RATIO`` times ``own`` plus ``UNPACKED_SLACK``.
    """
    if (held := unpacked_size(path)) > CHECKPOINT_RATIO * own + UNPACKED_SLACK:
        raise InvalidInputError(
            f"{Path(path).name} holds {size_text(held)} of data, more than {CHECKPOINT_RATIO}× "
            f"the {size_text(own)} of the factory's model; check that the factory builds the "
            "architecture the weights were saved from, or save model.state_dict() alone"
        )


def size_text(count: int) -> str:
    """``6.2 kB``, ``67.1 MB``: a size in the unit that reads best."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"


__all__ = [
    "CHECKPOINT_RATIO",
    "FILE_OPERATORS",
    "UNPACKED_RATIO",
    "UNPACKED_SLACK",
    "UntrustedFileError",
    "check_checkpoint_size",
    "check_unpacked_size",
    "size_text",
    "unpacked_size",
    "untrusted",
]
