"""The results table of a job: one row per input, as Parquet (with pyarrow) and CSV.

Columns: ``path``, ``key`` (the item's folder under ``items/``), ``status`` (``done``,
``failed``, or ``pending`` for an item no run has finished), ``predicted`` and
``predicted_class``, ``probability`` (of the predicted class, label or side of a binary
output, in the outputs' own terms: :func:`salience.outputs.summarize`; empty for a regression),
``value`` (a regression's first value), ``label`` and
``label_class`` (from the manifest), ``correct``, ``METHOD_deletion_auc`` and
``METHOD_insertion_auc`` per method when the job plays those curves, ``seconds`` (the item's
time in its worker) and ``error``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from salience.evaluation.faithfulness import DELETION, INSERTION
from salience.fileio import atomic_path, write_csv_atomic
from salience.runner.inputs import BatchItem
from salience.runner.work import DONE

PENDING = "pending"
CSV_NAME = "results.csv"
PARQUET_NAME = "results.parquet"


def auc_columns(methods: Sequence[str]) -> list[str]:
    """The AUC columns of these methods."""
    return [f"{method}_{mode}_auc" for method in methods for mode in (DELETION, INSERTION)]


def table_rows(
    items: Sequence[BatchItem],
    records: Mapping[str, Mapping[str, Any] | None],
    labels: Mapping[str, int | None],
    class_names: Sequence[str],
    *,
    methods: Sequence[str],
    auc: bool,
) -> list[dict[str, Any]]:
    """One row per item, in the inputs' order, from the items' records (None: not finished)."""
    rows = []
    for item in items:
        record = records.get(item.key) or {}
        status = record.get("status", PENDING)
        done = status == DONE
        label = labels.get(item.key)
        predicted = record.get("predicted") if done else None
        row: dict[str, Any] = {
            "path": item.path,
            "key": item.key,
            "status": status,
            "predicted": predicted,
            "predicted_class": record.get("predicted_class") if done else None,
            "probability": record.get("probability") if done else None,
            "value": record.get("value") if done else None,
            "label": label,
            "label_class": class_names[label] if label is not None else None,
            "correct": (predicted == label) if done and label is not None else None,
        }
        if auc:
            scores = record.get("auc", {}) if done else {}
            for method in methods:
                for mode in (DELETION, INSERTION):
                    row[f"{method}_{mode}_auc"] = scores.get(method, {}).get(mode)
        row["seconds"] = record.get("seconds")
        row["error"] = record.get("error")
        rows.append(row)
    return rows


def write_tables(folder: str | os.PathLike[str], rows: list[dict[str, Any]]) -> list[Path]:
    """Write ``results.csv`` and, where pyarrow is installed, ``results.parquet`` (atomically)."""
    folder = Path(folder)
    written = [write_csv_atomic(folder / CSV_NAME, rows)]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.Table.from_pylist(rows, schema=_schema(pa, rows))
    with atomic_path(folder / PARQUET_NAME) as temporary:
        pq.write_table(table, temporary)
    written.append(folder / PARQUET_NAME)
    return written


def _schema(pa: Any, rows: list[dict[str, Any]]) -> Any:
    """Fixed column types, so that a column of only empty cells keeps its type."""
    types = {
        "predicted": pa.int64(),
        "label": pa.int64(),
        "correct": pa.bool_(),
        "probability": pa.float64(),
        "value": pa.float64(),
        "seconds": pa.float64(),
    }
    return pa.schema(
        [
            (name, types.get(name, pa.float64() if name.endswith("_auc") else pa.string()))
            for name in rows[0]
        ]
    )
