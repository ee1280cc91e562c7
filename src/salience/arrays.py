"""Numeric arrays from untrusted files: ``.npy`` (never unpickled) and CSV tables of numbers.

A file's header says how big its array is; that size is checked against a limit before any
data is read, and against the file's own size, so a small file cannot make salience allocate
gigabytes.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from salience.errors import InvalidInputError, MissingFileError, TooLargeError


class ArrayFileError(InvalidInputError):
    """A ``.npy`` or CSV file that does not hold a usable numeric array."""


class ArrayTooLargeError(ArrayFileError, TooLargeError):
    """An array whose header (or count of cells) is over the size limit."""


_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _existing(path: str | os.PathLike[str]) -> Path:
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"{file} does not exist or is not a file; check the path")
    return file


def check_size(label: str, shape: tuple[int, ...], max_values: int) -> None:
    """Refuse an array of more than ``max_values`` values, before it is read."""
    count = math.prod(shape)
    if count > max_values:
        raise ArrayTooLargeError(
            f"{label} holds {count} values {tuple(shape)}, more than the limit of {max_values}; "
            "crop or resample it, or raise the limit (max_values=)"
        )


def check_input_shape(
    given: tuple[int, ...],
    expected: tuple[int | None, ...] | None,
    *,
    model: str,
    label: str,
    kind: str,
    fix: str,
) -> None:
    """Refuse an input of shape ``given`` that is not the ``expected`` one a model takes.

    ``expected`` holds None for free dimensions (the batch); None: unknown, nothing checked.
    The error names the model, what it expects, what ``label`` gives, and ``fix``.
    """
    if expected is None:
        return
    fits = len(expected) == len(given) and all(
        e is None or e == g for e, g in zip(expected[1:], given[1:], strict=True)
    )
    if not fits:
        wanted = ", ".join("N" if i == 0 else str(d or "?") for i, d in enumerate(expected))
        raise InvalidInputError(f"{model} expects {kind} ({wanted}), {label} gives {given}; {fix}")


def npy_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and data offset a ``.npy`` file's header gives; no data is read.

    Raises
    ------
    ArrayFileError
        For a file that is not a ``.npy`` array of format version 1 or 2.
    """
    file = _existing(path)
    with open(file, "rb") as stream:
        try:
            version = np.lib.format.read_magic(stream)
            read_header = _HEADER_READERS.get(version)
            if read_header is not None:
                shape, _, dtype = read_header(stream)
        except ValueError as error:
            raise ArrayFileError(f"{file.name} is not a .npy array ({error})") from None
        if read_header is None:
            raise ArrayFileError(
                f"{file.name} is a .npy of format version {version}; save it with numpy's "
                "np.save (format 1.0 or 2.0)"
            )
        return tuple(int(s) for s in shape), dtype, stream.tell()


def read_npy(path: str | os.PathLike[str], *, max_values: int) -> np.ndarray:
    """The numeric array of a ``.npy`` file as float32, its header checked first.

    Raises
    ------
    ArrayFileError
        For a file that is not a ``.npy`` array, an array of objects (which would need
        unpickling), a non-numeric dtype, more than ``max_values`` values, or a header that
        claims more data than the file holds.
    """
    file = _existing(path)
    shape, dtype, offset = npy_header(file)
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ArrayFileError(
            f"{file.name} holds {dtype} values, not numbers; save a numeric array "
            "(np.save(path, array.astype(np.float32)))"
        )
    check_size(file.name, shape, max_values)
    if file.stat().st_size - offset < math.prod(shape) * dtype.itemsize:
        raise ArrayFileError(f"{file.name} is shorter than its header {tuple(shape)} says")
    array = np.load(file, allow_pickle=False)
    return _finite(file.name, np.asarray(array, dtype=np.float32))


def read_csv_columns(
    path: str | os.PathLike[str], *, max_values: int
) -> tuple[np.ndarray, list[str] | None]:
    """A CSV table of numbers as ``(columns, rows)`` float32, and its header if it has one.

    The first row is a header when any of its cells is not a number. Every other cell must be
    a number.

    Raises
    ------
    ArrayFileError
        For an empty table, rows of different lengths, a cell that is not a number, or more
        than ``max_values`` cells (counted while reading, so a huge file stops early).
    """
    file = _existing(path)
    rows: list[list[float]] = []
    header: list[str] | None = None
    count = 0
    with open(file, newline="", encoding="utf-8-sig") as stream:
        for number, row in enumerate(csv.reader(stream), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            values = _numbers(row)
            if values is None and number == 1:
                header = [cell.strip() for cell in row]
                continue
            if values is None:
                column, cell = next(
                    (i, c) for i, c in enumerate(row) if _number(c) is None
                )  # the first cell that is not a number
                name = header[column] if header and column < len(header) else column + 1
                raise ArrayFileError(
                    f"{file.name} row {number}, column {name}: {cell.strip()!r} is not a number; "
                    "every cell after the header must be numeric"
                )
            width = len(header) if header else len(rows[0]) if rows else len(values)
            if len(values) != width:
                raise ArrayFileError(
                    f"{file.name} row {number} has {len(values)} cells, the table {width}; "
                    "give every row one value per column"
                )
            count += len(values)
            if count > max_values:
                check_size(file.name, (count,), max_values)
            rows.append(values)
    if not rows:
        raise ArrayFileError(f"{file.name} has no rows of numbers")
    table = np.asarray(rows, dtype=np.float32).T
    return _finite(file.name, table), header


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _numbers(row: list[str]) -> list[float] | None:
    values = [_number(cell) for cell in row]
    return None if any(v is None for v in values) else values  # type: ignore[return-value]


def _finite(label: str, array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ArrayFileError(
            f"{label} holds NaN or infinite values; replace them (np.nan_to_num) before explaining"
        )
    return array
