"""The job's ``index.html``: every image with its overlays as thumbnails, sortable in the browser.

One self-contained page (no network, no server: open the file) beside ``items/``. Each row shows
the image and one thumbnail per method (linked to the method's figure: the overlay under its
title, with its colorbar), captioned with the method, its key options, the class it explains and
its probability, the prediction, its
probability, the label and whether it is correct, the AUCs, the time and any error. Clicking a
column header sorts by it (again: the other way); empty cells stay last, ties keep the
table's order.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from salience.fileio import write_bytes_atomic
from salience.runner.manifest import ITEMS
from salience.runner.results import auc_columns
from salience.runner.work import DONE, IMAGE_THUMBNAIL, method_thumbnail

INDEX_NAME = "index.html"

TEMPLATE = "templates/index.html"
"""The page around the table (style sheet and sorting script), package data of the runner."""


def write_index(
    folder: str | os.PathLike[str],
    rows: Sequence[dict[str, Any]],
    *,
    methods: Sequence[str],
    model: str,
    auc: bool,
    captions: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """Write ``index.html`` for the results table ``rows`` (see :mod:`salience.runner.results`);
    ``captions`` (item key → method → text) caption the thumbnails."""
    page = render_index(rows, methods=methods, model=model, auc=auc, captions=captions)
    return write_bytes_atomic(Path(folder) / INDEX_NAME, page.encode("utf-8"))


ERROR_CHARACTERS = 80
"""An error cell shows this many characters at most (one line); its tooltip has the rest."""


def render_index(
    rows: Sequence[dict[str, Any]],
    *,
    methods: Sequence[str],
    model: str,
    auc: bool,
    captions: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """The page's HTML; ``captions`` (item key → method → text) caption the thumbnails (an
    item or method without one is captioned with the method's name)."""
    captions = captions or {}
    done = sum(row["status"] == DONE for row in rows)
    judged = [row for row in rows if row["correct"] is not None]
    accuracy = (
        f", {sum(row['correct'] for row in judged)} of {len(judged)} correct" if judged else ""
    )
    failed = sum(row["status"] == "failed" for row in rows)
    headers = [
        '<th data-sort="path" data-type="text">image</th>',
        f"<th>{html.escape(' · '.join(['image', *methods]))}</th>",
        '<th data-sort="predicted" data-type="text">prediction</th>',
        '<th data-sort="probability" data-type="number">confidence</th>',
        '<th data-sort="label" data-type="text">label</th>',
        '<th data-sort="correct" data-type="number">correct</th>',
        *(
            f'<th data-sort="{_attribute(column)}" data-type="number">{html.escape(column)}</th>'
            for column in (auc_columns(methods) if auc else [])
        ),
        '<th data-sort="seconds" data-type="number">seconds</th>',
        '<th data-sort="error" data-type="text">error</th>',
    ]
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(row["path"])) for row in rows])
    body = "\n".join(
        _row(
            index,
            row,
            os.path.relpath(os.path.abspath(row["path"]), folder),
            methods,
            auc,
            captions.get(row["key"], {}),
        )
        for index, row in enumerate(rows)
    )
    title = f"salience batch: {len(rows)} images, {model}"
    summary = f"{done} explained, {failed} failed{accuracy}; methods {', '.join(methods)}."
    return _template().substitute(
        title=html.escape(title),
        summary=html.escape(summary),
        headers="".join(headers),
        rows=body,
    )


@cache
def _template() -> Template:
    """The page's template, read once from the package."""
    return Template(resources.files("salience.runner").joinpath(TEMPLATE).read_text("utf-8"))


def _row(
    index: int,
    row: dict[str, Any],
    name: str,
    methods: Sequence[str],
    auc: bool,
    captions: Mapping[str, str],
) -> str:
    """One table row; ``name`` is the image's path shown (relative to the images' folder)."""
    done = row["status"] == DONE
    folder = f"{ITEMS}/{quote(row['key'])}"
    correct = row["correct"]
    classes = ["failed" if row["status"] == "failed" else ""]
    classes.append("" if correct is None else "right" if correct else "wrong")
    data = {
        "index": str(index),
        "path": row["path"],
        "predicted": row["predicted_class"] or "",
        "probability": _number(_confidence(row)),
        "label": row["label_class"] or "",
        "correct": "" if correct is None else str(int(correct)),
        "seconds": _number(row["seconds"]),
        "error": row["error"] or "",
    }
    cells = [
        f'<td class="path" title="{html.escape(row["path"])}">{html.escape(name)}</td>',
        f'<td class="thumbs">{_thumbnails(folder, methods, captions) if done else ""}</td>',
        f"<td>{html.escape(row['predicted_class'] or '')}</td>",
        f'<td class="num">{_shown_confidence(row)}</td>',
        f'<td class="label">{html.escape(row["label_class"] or "")}</td>',
        f'<td class="correct">{"" if correct is None else "✓" if correct else "✗"}</td>',
    ]
    if auc:
        for column in auc_columns(methods):
            data[_attribute(column)] = _number(row.get(column))
            cells.append(f'<td class="num">{_fixed(row.get(column), 3)}</td>')
    cells.append(f'<td class="num">{_fixed(row["seconds"], 2)}</td>')
    error = row["error"] or ""
    shown = error if len(error) <= ERROR_CHARACTERS else error[: ERROR_CHARACTERS - 1] + "…"
    cells.append(f'<td class="error" title="{html.escape(error)}">{html.escape(shown)}</td>')
    attributes = " ".join(
        f'data-{name}="{html.escape(value, quote=True)}"' for name, value in data.items()
    )
    class_names = " ".join(name for name in classes if name)
    return f'<tr class="{class_names}" {attributes}>{"".join(cells)}</tr>'


def _thumbnails(folder: str, methods: Sequence[str], captions: Mapping[str, str]) -> str:
    """The image's thumbnail, then each method's, linked to its figure, under its caption."""
    images = [(f"{folder}/{IMAGE_THUMBNAIL}", f"{folder}/{IMAGE_THUMBNAIL}", "image")]
    images += [
        (
            f"{folder}/{method_thumbnail(method)}",
            f"{folder}/{quote(method)}.png",
            captions.get(method, method),
        )
        for method in methods
    ]
    return "".join(
        f'<figure><a href="{html.escape(target)}"><img src="{html.escape(source)}" '
        f'alt="{html.escape(caption)}" title="{html.escape(caption)}" loading="lazy"></a>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for source, target, caption in images
    )


def _attribute(column: str) -> str:
    """A column's name as the suffix of a ``data-`` attribute."""
    return re.sub(r"[^a-z0-9_-]", "_", column.lower())


def _confidence(row: dict) -> float | None:
    """The probability of the prediction, or a regression's value."""
    return row["probability"] if row["probability"] is not None else row.get("value")


def _shown_confidence(row: dict) -> str:
    if row["probability"] is None and row.get("value") is not None:
        return f"{row['value']:.4g}"
    return _percent(row["probability"])


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _fixed(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"
