"""The interface every evaluation result shares: its table, its JSON, its files.

A result (:class:`~salience.evaluation.randomization.SanityResult`,
:class:`~salience.evaluation.data_randomization.DataRandomizationResult`,
:class:`~salience.evaluation.faithfulness.FaithfulnessReport`,
:class:`~salience.evaluation.agreement.Agreement`) gives :meth:`Report.rows` (the table the
command prints and the CSV holds), :meth:`Report.to_dict` (the JSON) and :meth:`Report.save`
(its files, each written atomically). :func:`write_report` writes them; :func:`format_rows`
prints a table of rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from salience.fileio import write_csv_atomic, write_json_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@runtime_checkable
class Report(Protocol):
    """An evaluation result: a table, a JSON summary, and the files that hold them."""

    def rows(self) -> list[dict[str, Any]]:
        """The table: one record per row, the same keys in each (the CSV's columns)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able summary."""
        ...

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write the result's files into ``folder`` atomically; return their paths."""
        ...


def write_report(
    stem: Path,
    summary: Mapping[str, Any],
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
    figures: Mapping[str, Callable[[], Figure]] | None = None,
) -> list[Path]:
    """Write ``stem.csv`` (the ``rows``, if given), ``stem.json`` (the ``summary``) and one PNG
    per figure (``stem`` + its suffix, e.g. ``"_curves.png"``), each atomically.

    The figures are drawn only here, one at a time, so a result saved without them draws none.
    """
    written = []
    if rows is not None:
        written.append(write_csv_atomic(stem.with_suffix(".csv"), rows))
    written.append(write_json_atomic(stem.with_suffix(".json"), summary))
    if figures:
        from salience.viz import save_figure

        for suffix, draw in figures.items():
            written.append(save_figure(draw(), stem.with_name(stem.name + suffix)))
    return written


@dataclass(frozen=True)
class Column:
    """One column of a printed table.

    Attributes
    ----------
    key : str
        The rows' key.
    title : str, optional
        The heading; default the key.
    spec : str
        The format spec of the values, e.g. ``".2f"``; numbers are right-aligned, text (an
        empty spec) left-aligned.
    width : int
        The least width; the column is as wide as its heading and widest value otherwise.
    """

    key: str
    title: str | None = None
    spec: str = ""
    width: int = 0


def format_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    indent: str = "",
    gap: str = " ",
) -> str:
    """The rows as a text table with a heading line, one line per row."""
    titles = [column.title or column.key for column in columns]
    cells = [[format(row[column.key], column.spec) for column in columns] for row in rows]
    widths = [
        max(column.width, len(title), *(len(line[c]) for line in cells))
        for c, (column, title) in enumerate(zip(columns, titles, strict=True))
    ]

    def line(texts: Sequence[str]) -> str:
        aligned = [
            text.rjust(width) if column.spec else text.ljust(width)
            for text, width, column in zip(texts, widths, columns, strict=True)
        ]
        return (indent + gap.join(aligned)).rstrip()

    return "\n".join([line(titles), *(line(texts) for texts in cells)])
