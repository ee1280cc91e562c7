"""The registry of model formats: how each is recognised, and the opener that reads it.

Every format is one module of :mod:`salience.models` that registers a :class:`ModelFormat` under
the registry kind ``FORMAT`` when it is imported. :func:`model_format` asks the registered
formats, in the order they were registered: first whether a name that is not a file is theirs
(a bundled model, a factory), then whether a file's suffix is, then whether its content is (the
entries of a zip archive, the first bytes). Formats are asked by ``rank``, lowest first, so
that a format that takes any file (ONNX, whose protobuf has no signature) is asked last.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from salience.errors import InvalidInputError, MissingFileError, UnsupportedError
from salience.registry import available, get, register

if TYPE_CHECKING:
    from salience.images import ImagePreset
    from salience.models.options import LoadOptions
    from salience.presets import PresetOverrides

FORMAT = "model format"
"""The registry kind of model formats (:func:`salience.registry.register`)."""
HEAD_BYTES = 8
"""How many of a file's first bytes :class:`FileHead` holds (HDF5's signature is 8 long)."""


class Opened(NamedTuple):
    """What an opener gives: the adapter, the model's name, its own preprocessing and class
    names (None when the file names none)."""

    adapter: Any
    name: str
    preset: ImagePreset
    class_names: Sequence[str] | None = None


@dataclass(frozen=True)
class FileHead:
    """What recognising a file's format may read: its suffix, its zip entries, its first bytes.

    Attributes
    ----------
    path : Path
        The file.
    suffix : str
        Its suffix, lower case.
    names : tuple of str, optional
        The names of its entries when it is a zip archive, else None.
    head : bytes
        Its first ``HEAD_BYTES`` bytes.
    """

    path: Path
    suffix: str
    names: tuple[str, ...] | None
    head: bytes

    @classmethod
    def read(cls, path: Path) -> FileHead:
        """Read the head of ``path`` (the zip directory, never an entry's contents)."""
        names = None
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = tuple(archive.namelist())
        with open(path, "rb") as file:
            head = file.read(HEAD_BYTES)
        return cls(path, path.suffix.lower(), names, head)


Opener = Callable[..., Opened]
"""``opener(model, options, settings, *, fuse) -> Opened``: ``settings`` are the preset
overrides (sidecar and options) the opener may need (the layout); ``fuse`` allows a captured
program for long runs of passes (``salience.adapters.fused``)."""


@dataclass(frozen=True)
class ModelFormat:
    """A kind of model salience opens: how it is recognised and how it is opened.

    Attributes
    ----------
    kind : str
        Its name (``onnx``, ``keras``, ...), as :func:`model_kind` answers.
    open : Opener
        Reads the model.
    suffixes : tuple of str
        Suffixes that are this format's whatever the content (and before the file exists).
    recognises : callable, optional
        ``recognises(head) -> bool``: whether a :class:`FileHead` is this format's.
    rank : int
        Formats are asked lowest rank first (and in registration order within a rank): a
        format whose ``recognises`` or ``claims_name`` takes what others may claim ranks higher.
    claims_name : callable, optional
        ``claims_name(model, options, exists) -> bool``, for a model named by something other
        than a file (a bundled model's name, a factory): whether ``model`` is this format's.
    model_file : callable
        ``model_file(model, options)``: the file it reads (its size is checked and a preset
        sidecar looked for beside it), or None.
    options : frozenset of str
        The :class:`~salience.models.LoadOptions` only this format takes (``weights``,
        ``input_name``); any other format refuses them.
    described : bool
        Its preprocessing and class names are known: no option, no sidecar, no check run.
    file_suffixes : tuple of str
        The suffixes to name in the error for a missing file.
    """

    kind: str
    open: Opener
    suffixes: tuple[str, ...] = ()
    recognises: Callable[[FileHead], bool] | None = None
    rank: int = 0
    claims_name: Callable[[str, LoadOptions, bool], bool] | None = None
    model_file: Callable[[str, LoadOptions], str | None] = lambda model, _options: model
    options: frozenset[str] = frozenset()
    described: bool = False
    file_suffixes: tuple[str, ...] = ()


def register_format(model_format: ModelFormat) -> ModelFormat:
    """Register ``model_format`` under its kind; formats are asked in registration order."""
    return register(FORMAT, model_format.kind)(model_format)


def formats() -> list[ModelFormat]:
    """The registered formats, in registration order."""
    return [get(FORMAT, kind) for kind in available(FORMAT, sort=False)]


def model_format(model: str, options: LoadOptions) -> ModelFormat:
    """The format of ``model`` (see the module docs for the order of the questions).

    Raises
    ------
    FileNotFoundError
        For a path that does not exist and names nothing else.
    """
    known = sorted(formats(), key=lambda f: f.rank)  # stable: registration order within a rank
    path = Path(model)
    exists = path.exists()
    for candidate in known:
        if candidate.claims_name is not None and candidate.claims_name(model, options, exists):
            return candidate
    suffix = path.suffix.lower()
    for candidate in known:
        if suffix in candidate.suffixes:
            return candidate
    if not exists:
        listed = dict.fromkeys(s for f in known for s in f.file_suffixes)
        raise MissingFileError(
            f"no model file {model}; give a bundled model (salience models lists them), a file "
            f"({', '.join(listed)}) or package.module:function"
        )
    if path.is_dir():
        raise IsADirectoryError(f"{model} is a folder; give the model file in it")
    head = FileHead.read(path)
    for candidate in known:
        if candidate.recognises is not None and candidate.recognises(head):
            return candidate
    raise UnsupportedError(f"{path.name} is of no format salience reads")


def no_layout(settings: PresetOverrides, name: str) -> None:
    """Refuse a channels-last layout for a PyTorch model."""
    if settings.layout not in (None, "nchw"):
        raise InvalidInputError(
            f"{name} is a PyTorch model: it takes NCHW inputs, not {settings.layout}"
        )


__all__ = [
    "FORMAT",
    "FileHead",
    "ModelFormat",
    "Opened",
    "formats",
    "model_format",
    "no_layout",
    "register_format",
]
