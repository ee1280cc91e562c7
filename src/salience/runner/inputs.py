"""The images of a batch job: a folder, a glob pattern, or a CSV/Parquet manifest with labels.

Each image becomes a :class:`BatchItem` named by its path relative to the input's root
(``cats/01.jpg``), and a ``key``: that path made into one safe file name (``cats__01.jpg``), the
name of its folder in the job's output. Both depend only on the inputs, not on how the input was
spelled (``photos``, ``./photos`` or ``/abs/photos``), so a re-run finds its earlier results.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from salience.errors import InvalidInputError, MissingFileError, MissingPackageError
from salience.modalities import DATA_FOLDER_SUFFIXES, is_data_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
PATH_COLUMN = "path"
LABEL_COLUMN = "label"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_GLOB_CHARACTERS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class BatchItem:
    """One image of a job.

    Attributes
    ----------
    key : str
        Unique, file-name-safe name of the item (its output folder).
    path : str
        The image file, as the input names it.
    label : str, optional
        The true class as the manifest gives it (an index or a class name).
    relative : str
        The image's path relative to the input's root (``/``-separated), or its absolute path
        for a file outside the root: what a re-run matches finished items by.
    """

    key: str
    path: str
    label: str | None = None
    relative: str = ""


def collect_inputs(source: str | os.PathLike[str]) -> list[BatchItem]:
    """The images named by ``source``, in a stable order.

    Parameters
    ----------
    source : str or os.PathLike
        A folder (its images, scans and signals (``.nii``, ``.nii.gz``, ``.npy``),
        recursively; names starting with ``.`` are skipped), a glob
        pattern (``photos/**/*.jpg``), a ``.csv``/``.parquet`` manifest with a ``path`` column
        (relative paths are relative to the manifest's folder) and an optional ``label`` column
        (a class index or name), or one image file.

    Raises
    ------
    FileNotFoundError
        When ``source`` names nothing.
    ValueError
        When it holds no image, or a manifest lacks its ``path`` column or lists a file twice.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(
            found
            for found in path.rglob("*")
            if (found.suffix.lower() in IMAGE_SUFFIXES or is_data_file(found))
            and found.is_file()
            and not any(part.startswith(".") for part in found.relative_to(path).parts)
        )
        return _items(path, [(str(found), None) for found in files], text)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return _items(path.parent, _read_manifest(path), text)
    if path.is_file():
        return _items(path.parent, [(text, None)], text)
    if _GLOB_CHARACTERS.search(text):
        files = sorted(name for name in glob.glob(text, recursive=True) if Path(name).is_file())
        return _items(_glob_root(text), [(name, None) for name in files], text)
    raise MissingFileError(
        f"{text} is no folder, file or pattern that matches files; give a folder of images, a "
        "glob ('photos/*.jpg') or a .csv/.parquet manifest with a path column"
    )


def is_feature_table(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is a table of feature rows rather than a manifest of images: a
    ``.csv``/``.parquet`` file without a ``path`` column."""
    from salience.tabular import table_columns

    path = Path(source)
    if not (path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES):
        return False
    return PATH_COLUMN not in table_columns(path)


def _items(root: Path, entries: list[tuple[str, str | None]], source: str) -> list[BatchItem]:
    if not entries:
        raise InvalidInputError(
            f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no scans or signals "
            f"({', '.join(DATA_FOLDER_SUFFIXES)}); give a folder, a glob or a manifest of them"
        )
    relatives = [_relative(root, Path(name)) for name, _ in entries]
    keys = [_key(relative) for relative in relatives]
    repeated = {key for key in keys if keys.count(key) > 1}
    keys = [
        f"{key}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}" if key in repeated else key
        for key, relative in zip(keys, relatives, strict=True)
    ]
    return [
        BatchItem(key, name, label, relative)
        for key, relative, (name, label) in zip(keys, relatives, entries, strict=True)
    ]


def _relative(root: Path, path: Path) -> str:
    """The path relative to ``root``, else its absolute path, ``/``-separated."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _key(relative: str) -> str:
    """A relative (or absolute) path as one safe file name."""
    parts = PurePosixPath(relative).parts
    name = "__".join(_UNSAFE.sub("_", part) for part in parts if part not in ("", ".", "/"))
    return name.lstrip(".") or "image"


def _glob_root(pattern: str) -> Path:
    """The folder above the first part of ``pattern`` that holds a glob character."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if _GLOB_CHARACTERS.search(part))
    return Path(*parts[:first]) if first else Path(".")


def _read_manifest(path: Path) -> list[tuple[str, str | None]]:
    """``(image path, label)`` rows of a CSV or Parquet manifest."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            columns = list(rows[0]) if rows else []
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise MissingPackageError(
                f"reading the Parquet manifest {path.name} needs pyarrow; "
                "pip install 'salience[batch]'"
            ) from error
        table = pq.read_table(path)
        columns, rows = list(table.column_names), table.to_pylist()
    if PATH_COLUMN not in columns:
        raise InvalidInputError(
            f"the manifest {path} has no {PATH_COLUMN!r} column (it has: "
            f"{', '.join(columns) or 'none'}); name the image column {PATH_COLUMN!r}"
        )
    entries: list[tuple[str, str | None]] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        given = row[PATH_COLUMN]
        if given is None or not str(given).strip():
            raise InvalidInputError(f"row {number} of {path} has an empty {PATH_COLUMN}")
        image = Path(str(given).strip())
        image = image if image.is_absolute() else path.parent / image
        name = os.path.normpath(image)
        if name in seen:
            raise InvalidInputError(
                f"{path} lists {given} twice (rows {seen[name]} and {number}); remove one row"
            )
        seen[name] = number
        label = row.get(LABEL_COLUMN)
        missing = label is None or label != label or str(label).strip() == ""  # NaN: missing
        label = None if missing else str(label).strip()
        entries.append((name, label))
    return entries


def label_index(label: str | None, class_names: list[str], item: BatchItem) -> int | None:
    """The class index of a manifest label: a class name (any case) or an index; None if none.

    An index may be written as an integral float (``3.0``): what pandas writes for an integer
    column with a missing value.

    Raises
    ------
    ValueError
        For a label that is neither a class name nor an index of the model's outputs.
    """
    if label is None:
        return None
    lowered = [name.lower() for name in class_names]
    if label.lower() in lowered:
        return lowered.index(label.lower())
    index = _integral(label)
    if index is not None and 0 <= index < len(class_names):
        return index
    raise InvalidInputError(
        f"the label {label!r} of {item.path} is neither a class name nor a class index "
        f"(0..{len(class_names) - 1}) of the model; fix the manifest's label column"
    )


def _integral(label: str) -> int | None:
    """The integer a label spells (``3``, ``-1``, ``3.0``), or None."""
    if label.lstrip("-").isdigit():
        return int(label)
    try:
        number = float(label)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None
