"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from salience.errors import InvalidInputError


def _read_umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it: done once, at import
    os.umask(umask)
    return umask


NEW_FILE_MODE = 0o666 & ~_read_umask()
"""The mode ``open()`` gives a new file; written files get it too (mkstemp's is 0600)."""


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
            os.fchmod(written.fileno(), NEW_FILE_MODE)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> Path:
    """Write ``value`` as indented JSON (UTF-8, trailing newline) atomically."""
    return write_bytes_atomic(path, (json.dumps(value, indent=2) + "\n").encode("utf-8"))


def write_csv_atomic(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write records with the same keys as a CSV table with a header, atomically."""
    if not rows:
        raise InvalidInputError(f"no rows to write to {path}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))


def write_together(folder: str | os.PathLike[str], files: Mapping[str, bytes]) -> None:
    """Write files into ``folder`` so that they appear together or not at all.

    Each is written to a temporary file beside its place first; only when all are written are
    they renamed into place (:func:`atomic_path`), and an error removes them all.
    """
    with ExitStack() as stack:
        for name, data in files.items():
            stack.enter_context(atomic_path(Path(folder) / name)).write_bytes(data)
