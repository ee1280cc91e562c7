"""Captured programs kept on disk, so that a second process pays no capture.

A capture (:mod:`salience.adapters.fused`) costs seconds: importing torch's export machinery,
exporting, tracing. Its result, a frozen TorchScript program, is written here and read back by
later processes that explain the same model on inputs of the same shape.

Reading a TorchScript archive runs its unpickler, so an entry is read only when it is provably
this user's own: every entry carries an HMAC-SHA256 tag under a random key kept in the store
(a file only its owner can read), and the tag is checked on the bytes before anything parses
them. A store that other users could write to (not owned by the user, or group/world-writable)
is not used at all.

An entry is named by a fingerprint of everything a program depends on: the inference copy's
structure (module types and their plain attributes), the contents of every weight, the source
files that define the model's classes and the helpers they import from their own package (for
``__main__``, the script), the input shape and dtype, the layout options, the version of torch
and salience's capture code. A model whose attributes cannot be named that way (a function, an
arbitrary object) gets no fingerprint and is captured in memory only. A program read back is
still checked against the eager copy, as a fresh capture is.

The store is ``platformdirs.user_cache_dir("salience")/programs``, or the folder in the
``SALIENCE_CACHE_DIR`` environment variable; ``SALIENCE_CACHE_DIR=off`` turns it off. It keeps
at most :data:`STORE_BYTES` bytes, dropping the least recently used entries first.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import os
import secrets
import stat
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import torch
import xxhash
from torch import Tensor, nn

LOGGER = logging.getLogger(__name__)
ENVIRONMENT = "SALIENCE_CACHE_DIR"
"""The environment variable naming the store's folder (``off``: no store)."""
STORE_BYTES = 2 * 1024**3
"""The most the store keeps; the least recently used entries go first."""
_MAGIC = b"salience-program-1\n"
_TAG_BYTES = 32
_KEY_NAME = "key"
_SUFFIX = ".program"
_OFF = frozenset({"off", "0", "none", "false"})
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


_CAPTURE_FILES = ("fused.py", "program_store.py")
_CAPTURE_CODE = hashlib.sha256(
    b"".join(Path(__file__).with_name(name).read_bytes() for name in _CAPTURE_FILES)
).hexdigest()
"""A digest of salience's capture code: a program is named by the code that made it too."""


class UnnameableError(Exception):
    """A model attribute that no fingerprint can stand for across processes."""


def store_directory() -> Path | None:
    """The store's folder, created if missing; None when it is off or others could write to it."""
    chosen = os.environ.get(ENVIRONMENT)
    if chosen is not None and chosen.strip().lower() in _OFF | {""}:
        return None
    if chosen is None:
        import platformdirs

        folder = Path(platformdirs.user_cache_dir("salience")) / "programs"
    else:
        folder = Path(chosen).expanduser()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder if _private(folder) else None
    except OSError as error:
        LOGGER.debug("program store %s unusable: %s", folder, error)
        return None


def _private(path: Path) -> bool:
    """Whether ``path`` belongs to this user and no one else may write to it (read, for a key)."""
    info = path.lstat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return False
    forbidden = stat.S_IWGRP | stat.S_IWOTH
    if stat.S_ISREG(info.st_mode):
        forbidden |= stat.S_IRGRP | stat.S_IROTH
    elif not stat.S_ISDIR(info.st_mode):
        return False  # a link or anything else: not used
    return not info.st_mode & forbidden


def _key(folder: Path) -> bytes | None:
    """The store's secret key, made on first use; None when it is not a private file or cannot
    be read or made (a read-only home, say): the store is then not used."""
    path = folder / _KEY_NAME
    try:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "wb") as file:
                file.write(secrets.token_bytes(32))
        if not stat.S_ISREG(path.lstat().st_mode) or not _private(path):
            return None
        key = path.read_bytes()
    except OSError as error:
        LOGGER.debug("program store key %s unusable: %s", path, error)
        return None
    return key if len(key) == 32 else None


def _tag(key: bytes, name: str, payload: bytes) -> bytes:
    return hmac.new(key, name.encode() + b"\0" + payload, hashlib.sha256).digest()


def _value(value: object, depth: int = 0) -> object:
    """A stand-in for an attribute value that means the same in every process."""
    if isinstance(value, _PLAIN):
        return (type(value).__name__, repr(value))
    if isinstance(value, Tensor):
        return ("tensor", *_tensor(value))
    if depth < 4 and isinstance(value, tuple | list | set | frozenset):
        items = [_value(v, depth + 1) for v in value]
        if isinstance(value, set | frozenset):
            items = sorted(map(repr, items))
        return (type(value).__name__, items)
    if depth < 4 and isinstance(value, dict):
        return ("dict", [(_value(k, depth + 1), _value(v, depth + 1)) for k, v in value.items()])
    raise UnnameableError(type(value).__qualname__)


def _tensor(t: Tensor) -> tuple:
    try:
        data = t.detach().to("cpu").contiguous()
        if data.is_complex():
            data = torch.view_as_real(data)
        raw = data.reshape(-1).view(torch.uint8).numpy() if data.numel() else b""
    except (RuntimeError, TypeError) as error:  # quantized, sparse, ...
        raise UnnameableError(f"a {t.layout} tensor") from error
    return (str(t.dtype), tuple(t.shape), xxhash.xxh3_128_hexdigest(raw))


def _source(kind: type) -> str:
    """A digest of the code ``kind`` runs: the files of the modules defining it and its base
    classes, and of the modules of their package they take names from (helpers imported from
    beside them); torch's own classes: torch's version."""
    names: set[str] = set()
    for base in kind.__mro__:
        owner = base.__module__
        package = owner.partition(".")[0]
        if package in ("torch", "builtins"):
            continue
        names.add(owner)
        for value in vars(sys.modules.get(owner, ModuleType(owner))).values():
            source = value.__name__ if isinstance(value, ModuleType) else None
            source = source or getattr(value, "__module__", None)
            if isinstance(source, str) and source.partition(".")[0] == package:
                names.add(source)
    if not names:
        return "torch"
    files = sorted(
        {file for name in names if (file := getattr(sys.modules.get(name), "__file__", None))}
    )
    if any(getattr(sys.modules.get(name), "__file__", None) is None for name in names):
        raise UnnameableError(f"the source of {kind.__qualname__}")  # defined interactively
    digest = hashlib.sha256()
    try:
        for file in files:
            digest.update(file.encode() + b"\0" + Path(file).read_bytes())
    except OSError as error:
        raise UnnameableError(f"the source of {kind.__qualname__}") from error
    return digest.hexdigest()


def fingerprint(copy: nn.Module, sample: Tensor, options: tuple) -> str | None:
    """The name of the program captured from ``copy`` for inputs like ``sample``; None when
    the copy holds something no fingerprint can stand for (it is then captured in memory only)."""
    digest = hashlib.sha256()
    parts: list[object] = [
        torch.__version__,
        _CAPTURE_CODE,
        options,
        tuple(sample.shape),
        str(sample.dtype),
        sample.is_contiguous(memory_format=torch.channels_last) if sample.ndim == 4 else None,
    ]
    try:
        sources = {}
        for name, module in copy.named_modules(remove_duplicate=False):
            kind = type(module)
            if kind not in sources:
                sources[kind] = _source(kind)
            attributes = []
            for key, value in vars(module).items():
                if key in ("_parameters", "_buffers", "_modules", "training"):
                    continue
                attributes.append((key, _value(value)))
            tensors = [
                (key, None if t is None else _tensor(t))
                for group in (module._parameters, module._buffers)
                for key, t in group.items()
            ]
            parts.append((name, f"{kind.__module__}.{kind.__qualname__}", attributes, tensors))
        parts.append(sorted((f"{k.__module__}.{k.__qualname__}", v) for k, v in sources.items()))
    except UnnameableError as error:
        LOGGER.debug("no program fingerprint: %s", error)
        return None
    digest.update(repr(parts).encode())
    return digest.hexdigest()


def contains(name: str) -> bool:
    """Whether the store holds an entry named ``name`` (not yet checked)."""
    folder = store_directory()
    return folder is not None and (folder / (name + _SUFFIX)).is_file()


def read(name: str) -> torch.jit.ScriptModule | None:
    """The program stored as ``name``; None when there is none or it fails its tag."""
    folder = store_directory()
    key = None if folder is None else _key(folder)
    if key is None:
        return None
    path = folder / (name + _SUFFIX)
    try:
        if path.stat().st_size > STORE_BYTES:
            return None
        blob = path.read_bytes()
    except OSError:
        return None
    header = len(_MAGIC) + _TAG_BYTES
    payload = blob[header:]
    if not blob.startswith(_MAGIC) or not hmac.compare_digest(
        blob[len(_MAGIC) : header], _tag(key, name, payload)
    ):
        LOGGER.warning("program store entry %s fails its tag: removed", path)
        _remove(path)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            program = torch.jit.load(io.BytesIO(payload), map_location="cpu")
    except Exception as error:  # written by another torch build, say: capture afresh
        LOGGER.debug("program store entry %s unreadable: %s", path, error)
        _remove(path)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept longest
    return program


def write(name: str, program: torch.jit.ScriptModule) -> None:
    """Store ``program`` as ``name`` (atomically), then trim the store to :data:`STORE_BYTES`."""
    folder = store_directory()
    key = None if folder is None else _key(folder)
    if key is None:
        return
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            torch.jit.save(program, buffer)
    except Exception as error:  # a program TorchScript cannot write: kept in memory only
        LOGGER.debug("program not stored: %s", error)
        return
    payload = buffer.getvalue()
    partial = None
    try:
        descriptor, partial = tempfile.mkstemp(dir=folder, suffix=".partial")
        with os.fdopen(descriptor, "wb") as file:
            file.write(_MAGIC + _tag(key, name, payload) + payload)
        os.replace(partial, folder / (name + _SUFFIX))
    except OSError as error:  # a full disk, say: the program stays in memory only
        LOGGER.debug("program not stored: %s", error)
        if partial is not None:
            _remove(Path(partial))
        return
    _trim(folder)


def _remove(path: Path) -> None:
    """Delete ``path`` if it can be (another process may have removed it first)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _trim(folder: Path) -> None:
    """Drop the least recently used entries until the store holds at most STORE_BYTES."""
    entries = []
    for path in folder.glob("*" + _SUFFIX):
        try:
            info = path.stat()
        except OSError:
            continue
        entries.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= STORE_BYTES:
            break
        _remove(path)
        total -= size
