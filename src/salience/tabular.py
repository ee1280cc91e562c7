"""Rows of features from a CSV or Parquet file with a header: the inputs of tabular models.

A table is a user's file: every row read is checked (a missing column, a non-numeric or empty
cell, a width that does not fit the model each get one line naming the column or row and what
the model expects), and at most ``max_rows`` rows are read, so a file cannot grow into
unbounded work.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salience.errors import InvalidInputError, MissingFileError, MissingPackageError, TooLargeError
from salience.fileio import atomic_path, write_csv_atomic

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
MAX_ROWS = 10_000
"""Rows read from one table by default; more are refused (``max_rows`` raises the bound)."""
MAX_COLUMNS = 65_536
"""Columns a header may have."""


@dataclass(frozen=True)
class Rows:
    """Feature rows read from a table.

    Attributes
    ----------
    values : numpy.ndarray
        ``(N, F)`` float64 features, in the order of ``features``.
    features : tuple of str
        The column of each feature.
    source : str
        The file's name, for messages and titles.
    """

    values: np.ndarray
    features: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def labels(self) -> list[str]:
        """A name per row: ``row 1`` for the first row under the header."""
        return [f"row {number}" for number in range(1, len(self) + 1)]


def is_table(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a CSV or Parquet file by its suffix."""
    return Path(path).suffix.lower() in TABLE_SUFFIXES


def parse_features(text: str | None) -> list[str] | None:
    """``--features age,amount,...`` as column names (None: not given).

    Raises
    ------
    InvalidInputError
        For an empty name or a name given twice.
    """
    if text is None:
        return None
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise InvalidInputError(f"--features has an empty name in {text!r}; separate names by ','")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidInputError(f"--features names {', '.join(repeated)} twice; name each once")
    return names


def read_rows(
    path: str | os.PathLike[str],
    features: Sequence[str] | None = None,
    *,
    width: int | None = None,
    max_rows: int = MAX_ROWS,
) -> Rows:
    """The feature rows of a CSV or Parquet file with a header.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.csv`` (read with the csv module) or ``.parquet`` (pyarrow) file.
    features : sequence of str, optional
        The columns to read, in the model's order; default every numeric column, in file order.
    width : int, optional
        The number of features the model takes; checked against the columns.
    max_rows : int
        Refuse a file with more rows than this (only ``max_rows + 1`` rows are ever read).

    Raises
    ------
    InvalidInputError
        For a missing column, a non-numeric, empty or non-finite cell, a count of columns that
        is not ``width``, no rows, or more than ``max_rows`` rows; each names the column or row.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise MissingFileError(f"{path} is no file; give a .csv or .parquet table with a header")
    if max_rows < 1:
        raise InvalidInputError(f"max_rows must be >= 1, got {max_rows}")
    if path.suffix.lower() == ".csv":
        columns, cells = _read_csv(path, max_rows)
    else:
        columns, cells = _read_parquet(path, max_rows)
    if len(cells) > max_rows:
        raise _too_many_rows(name, max_rows)
    if not cells:
        raise InvalidInputError(f"{name} has a header but no rows; add rows of features")
    chosen = _chosen_columns(name, columns, cells, features, width)
    index = [columns.index(column) for column in chosen]
    values = np.empty((len(cells), len(chosen)), dtype=np.float64)
    for number, row in enumerate(cells, start=1):
        for j, (column, position) in enumerate(zip(chosen, index, strict=True)):
            values[number - 1, j] = _number(row[position], name, number, column)
    return Rows(values, tuple(chosen), name)


def _too_many_rows(name: str, max_rows: int) -> TooLargeError:
    return TooLargeError(
        f"{name} has more than {max_rows} rows; explain at most that many at a time "
        "(--max-rows raises the bound) or split the file"
    )


def _chosen_columns(
    name: str,
    columns: list[str],
    cells: list[list[Any]],
    features: Sequence[str] | None,
    width: int | None,
) -> list[str]:
    """The columns to read: ``features`` (each must exist), else the numeric ones."""
    if features is not None:
        missing = [feature for feature in features if feature not in columns]
        if missing:
            raise InvalidInputError(
                f"{name} has no column {', '.join(map(repr, missing))} (it has: "
                f"{', '.join(columns)}); fix --features or the header"
            )
        if width is not None and len(features) != width:
            raise InvalidInputError(
                f"--features names {len(features)} columns but the model takes {width} "
                "features; name exactly the model's inputs, in its order"
            )
        return list(features)
    numeric = [column for j, column in enumerate(columns) if _looks_numeric(cells, j)]
    if width is not None and len(numeric) != width:
        others = [column for column in columns if column not in numeric]
        skipped = f"; not numbers: {', '.join(others)}" if others else ""
        raise InvalidInputError(
            f"{name} has {len(numeric)} numeric columns ({', '.join(numeric) or 'none'}"
            f"{skipped}) but the model takes {width} features; choose them with "
            "--features A,B,... in the model's order"
        )
    if not numeric:
        raise InvalidInputError(f"{name} has no numeric column; give rows of numbers")
    return numeric


def _looks_numeric(cells: list[list[Any]], j: int) -> bool:
    """Whether column ``j``'s first non-empty cell is a number."""
    for row in cells:
        cell = row[j]
        if cell is None or (isinstance(cell, str) and not cell.strip()):
            continue
        if isinstance(cell, bool):
            return False
        if isinstance(cell, int | float):
            return True
        try:
            float(str(cell))
        except ValueError:
            return False
        return True
    return False


def _number(cell: Any, name: str, row: int, column: str) -> float:
    """One cell as a finite float; an error names the row and the column."""
    where = f"row {row} of {name}, column {column!r}"
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        raise InvalidInputError(f"{where} is empty; fill the missing value or drop the row")
    not_a_number = InvalidInputError(
        f"{where} holds {str(cell)[:40]!r}, not a number; the model takes numbers in every "
        "feature column"
    )
    if isinstance(cell, bool):
        raise not_a_number
    try:
        value = float(cell.strip() if isinstance(cell, str) else cell)
    except (TypeError, ValueError):
        raise not_a_number from None
    if not math.isfinite(value):
        raise InvalidInputError(f"{where} is {value}; give finite numbers")
    return value


def table_columns(path: str | os.PathLike[str]) -> list[str]:
    """The column names of a CSV (its first line) or Parquet (its schema) table."""
    path = Path(path)
    columns, _ = _read_csv(path, 0) if path.suffix.lower() == ".csv" else _read_parquet(path, 0)
    return columns


def _read_csv(path: Path, max_rows: int) -> tuple[list[str], list[list[Any]]]:
    """The header and at most ``max_rows + 1`` rows of a CSV file."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise InvalidInputError(
                f"{path.name} is empty; give a header line of column names and rows"
            ) from None
        except csv.Error as error:
            raise InvalidInputError(f"{path.name} is not a readable CSV ({error})") from None
        columns = _checked_header(path.name, [column.strip() for column in header])
        rows: list[list[Any]] = []
        try:
            for number, row in enumerate(_limited(reader, max_rows + 1), start=1):
                if len(row) != len(columns):
                    raise InvalidInputError(
                        f"row {number} of {path.name} has {len(row)} cells but the header "
                        f"{len(columns)} columns; give every row one cell per column"
                    )
                rows.append(row)
        except csv.Error as error:
            raise InvalidInputError(f"{path.name} is not a readable CSV ({error})") from None
    return columns, rows


def _limited(reader: Iterator[list[str]], count: int) -> Iterator[list[str]]:
    """The first ``count`` non-blank rows."""
    taken = 0
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        yield row
        taken += 1
        if taken == count:
            return


def _read_parquet(path: Path, max_rows: int) -> tuple[list[str], list[list[Any]]]:
    """The columns and at most ``max_rows + 1`` rows of a Parquet file."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise MissingPackageError(
            f"reading the Parquet table {path.name} needs pyarrow; pip install 'salience[batch]'"
        ) from error
    try:
        table = pq.ParquetFile(path)
        columns = _checked_header(path.name, list(table.schema_arrow.names))
        if max_rows and table.metadata.num_rows > max_rows:  # refused before any is decoded
            raise _too_many_rows(path.name, max_rows)
        rows: list[list[Any]] = []
        for batch in table.iter_batches(batch_size=min(max_rows + 1, 65_536)):
            values = batch.to_pydict()
            rows += [list(row) for row in zip(*(values[c] for c in columns), strict=True)]
            if len(rows) > max_rows:
                break
    except OSError as error:
        raise InvalidInputError(f"{path.name} is not a readable Parquet file ({error})") from None
    return columns, rows[: max_rows + 1]


def _checked_header(name: str, columns: list[str]) -> list[str]:
    if len(columns) > MAX_COLUMNS:
        raise InvalidInputError(f"{name} has {len(columns)} columns, more than {MAX_COLUMNS}")
    if not any(columns):
        raise InvalidInputError(f"{name} has no header; its first line names the columns")
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        raise InvalidInputError(
            f"{name} names the column {', '.join(map(repr, repeated))} twice; name each once"
        )
    return columns


def feature_means(
    path: str | os.PathLike[str], features: Sequence[str], *, max_rows: int = MAX_ROWS
) -> np.ndarray:
    """The mean of each feature over the rows of a reference table: a baseline ``(1, F)``."""
    return read_rows(path, features, max_rows=max_rows).values.mean(axis=0, keepdims=True)


def write_table(path: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> Path:
    """Write records with the same keys as CSV, or as Parquet for a ``.parquet`` path (pyarrow),
    atomically; return the path."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".pq"):
        return write_csv_atomic(path, records)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise MissingPackageError(
            f"writing the Parquet table {path.name} needs pyarrow; pip install 'salience[batch]'"
        ) from error
    with atomic_path(path) as temporary:
        pq.write_table(pa.Table.from_pylist(list(records)), temporary)
    return path
