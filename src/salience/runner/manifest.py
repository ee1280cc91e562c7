"""The output folder of a job: what is finished, under which settings, and safe writing into it.

Layout::

    OUT/job.json                 the job's settings and fingerprint
    OUT/items/KEY/record.json    one item's record: written last, it marks the item finished
    OUT/items/KEY/...            the item's maps (.npz, .json), overlays and thumbnails (.png)
    OUT/.lock                    held while a job writes into OUT

Every file is written atomically (:mod:`salience.fileio`), and an item's record only after its
other files, so an interrupted job leaves finished items and nothing half-written. An item is
finished when its record says ``done`` under the job's fingerprint, for the same input file
(its path relative to the input's root, its size and modification time), and all its files
exist; a re-run skips those and redoes the rest,
failed items included.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from salience.fileio import write_bytes_atomic, write_json_atomic
from salience.runner.inputs import BatchItem
from salience.runner.work import DONE, ItemResult

ITEMS = "items"
RECORD = "record.json"
JOB = "job.json"
LOCK = ".lock"
_TEMPORARY = re.compile(r"^\..+\.tmp$")
"""The names :func:`salience.fileio.atomic_path` gives its temporary files."""


def input_stamp(path: str) -> list[int] | None:
    """``[size, mtime_ns]`` of an input file; None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


class JobFolder:
    """The output folder of one job.

    Parameters
    ----------
    root : path
        The folder (created when missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def item_folder(self, key: str) -> Path:
        """Where an item's files go."""
        return self.root / ITEMS / key

    def read_record(self, key: str) -> dict[str, Any] | None:
        """An item's record, or None when there is none (or it cannot be read)."""
        try:
            record = json.loads((self.item_folder(key) / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def is_finished(self, item: BatchItem, fingerprint: str) -> bool:
        """Whether the item is done under these settings, for the same input file."""
        record = self.read_record(item.key)
        if record is None or record.get("status") != DONE:
            return False
        if record.get("fingerprint") != fingerprint or record.get("relative") != item.relative:
            return False
        if record.get("input") != input_stamp(item.path):
            return False
        folder = self.item_folder(item.key)
        return all((folder / name).is_file() for name in record.get("files", []))

    def write_item(self, item: BatchItem, result: ItemResult, fingerprint: str) -> dict[str, Any]:
        """Write the item's files, then its record; remove files of an earlier run it no longer
        has. Returns the record."""
        folder = self.item_folder(item.key)
        for name, data in result.files.items():
            write_bytes_atomic(folder / name, data)
        record = {
            "key": item.key,
            "path": item.path,
            "relative": item.relative,
            "input": input_stamp(item.path),
            "fingerprint": fingerprint,
            **result.record,
        }
        write_json_atomic(folder / RECORD, record)
        keep = {*result.files, RECORD}
        for stale in folder.iterdir():
            if stale.name not in keep and stale.is_file():
                stale.unlink(missing_ok=True)
        return record

    def write_job(self, description: dict[str, Any]) -> Path:
        """Write ``job.json``."""
        return write_json_atomic(self.root / JOB, description)

    def remove_temporaries(self) -> int:
        """Delete the temporary files a killed job left (only while holding :meth:`lock`)."""
        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                if _TEMPORARY.match(name):
                    Path(folder, name).unlink(missing_ok=True)
                    removed += 1
        return removed

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock; another job writing into it makes this raise at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OSError(
                    f"another batch job is writing into {self.root}; wait for it to finish or "
                    "give another output folder"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
