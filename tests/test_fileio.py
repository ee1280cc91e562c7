"""Atomic writes: whole files, with the permissions of a normally created file."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from salience.fileio import atomic_path, write_bytes_atomic, write_csv_atomic, write_json_atomic


def test_written_files_get_the_mode_a_new_file_gets(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")  # the mode open() gives under this process's umask
    written = write_bytes_atomic(tmp_path / "atomic.txt", b"x")
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = write_json_atomic(tmp_path / "table.json", {"a": 1})
    with pytest.raises(ValueError, match="no rows"):
        write_csv_atomic(tmp_path / "table.csv", [])
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as temporary:
        temporary.write_bytes(b'{"a": ')  # half a file, then the writer fails
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["table.json"]


def test_csv_rows_round_trip(tmp_path: Path) -> None:
    rows = [{"method": "gradient", "auc": 0.25}, {"method": "rise", "auc": 0.5}]
    path = write_csv_atomic(tmp_path / "t.csv", rows)
    with open(path, newline="") as handle:
        assert list(csv.DictReader(handle)) == [
            {"method": "gradient", "auc": "0.25"},
            {"method": "rise", "auc": "0.5"},
        ]
