"""Scans and signals as inputs: which kind a file is, reading it (from a path or its bytes),
checking it fits the model, and the files one explanation of it is written as.

The command line (``salience explain scan.nii.gz``) and the batch runner (``salience batch
scans/``) both write, per method and target: ``STEM.npz`` and ``.json`` (the raw maps and the
input's geometry), ``STEM.png`` (a scan's slice montage through the map's peak, or a signal's
traces with the saliency band beneath each) and, for a scan, ``STEM.nii.gz`` (the map at the
scan's shape, with its affine).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from salience.signals import Signal
from salience.volumes import Volume

IMAGE, VOLUME, SIGNAL = "image", "volume", "signal"
DATA_FOLDER_SUFFIXES = (".nii", ".nii.gz", ".npy")
"""The files of a folder read as scans or signals (a ``.npy`` by its rank)."""
_LABEL_SUFFIXES = (".nii.gz", ".nii", ".npy", ".csv")


def input_kind(name: str | os.PathLike[str]) -> str:
    """``"volume"`` for NIfTI and 3-D/4-D ``.npy``, ``"signal"`` for CSV and 1-D/2-D ``.npy``,
    else ``"image"``."""
    from salience.signals import is_signal_file
    from salience.volumes import is_volume_file

    if is_volume_file(name):
        return VOLUME
    if is_signal_file(name):
        return SIGNAL
    if str(name).lower().endswith(".npy") and Path(name).is_file():
        from salience.arrays import npy_header

        return SIGNAL if len(npy_header(name)[0]) <= 2 else VOLUME
    return IMAGE


def is_data_file(name: str | os.PathLike[str]) -> bool:
    """Whether a file found in a folder is read as a scan or signal rather than an image."""
    return str(name).lower().endswith(DATA_FOLDER_SUFFIXES)


def data_label(path: str | os.PathLike[str]) -> str:
    """The file's name without its data suffix (``scan.nii.gz`` → ``scan``)."""
    name = Path(path).name
    for suffix in _LABEL_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "input"
    return Path(path).stem or "input"


def load_data(
    path: str | os.PathLike[str], kind: str | None = None, *, max_values: int | None = None
) -> Volume | Signal:
    """The scan or signal in ``path`` (its kind from :func:`input_kind` unless given).

    ``max_values`` bounds its size (all channels), checked from the file's header before any
    value is read; None: the loader's default (``DEFAULT_MAX_VOXELS``, ``DEFAULT_MAX_SAMPLES``).
    """
    kind = kind or input_kind(path)
    if kind == VOLUME:
        from salience.volumes import DEFAULT_MAX_VOXELS, load_volume

        return load_volume(path, max_voxels=max_values or DEFAULT_MAX_VOXELS)
    from salience.signals import DEFAULT_MAX_SAMPLES, load_signal

    return load_signal(path, max_samples=max_values or DEFAULT_MAX_SAMPLES)


@contextmanager
def bytes_as_file(data: bytes, name: str) -> Iterator[Path]:
    """A private temporary file named like ``name`` (its last part) holding ``data``, removed
    after the block: the readers of files (and their checks) read uploaded bytes through it."""
    with tempfile.TemporaryDirectory(prefix="salience-") as folder:
        path = Path(folder) / (Path(name).name or "input")
        path.write_bytes(data)
        yield path


def load_data_bytes(
    data: bytes, name: str, kind: str | None = None, *, max_values: int | None = None
) -> Volume | Signal:
    """The scan or signal whose file ``name`` holds ``data``: read through a private temporary
    file of the same name, so the size limits and checks are those of :func:`load_data`."""
    with bytes_as_file(data, name) as path:
        loaded = load_data(path, kind, max_values=max_values)
    return _named(loaded, Path(name).name)


def _named(item: Volume | Signal, label: str) -> Volume | Signal:
    from dataclasses import replace

    return replace(item, label=label)


def check_data_fits(item: Volume | Signal, expected: Any, model: str) -> None:
    """Refuse a scan or signal whose shape is not the one the model takes (None: no check)."""
    if isinstance(item, Volume):
        from salience.volumes import check_fits
    else:
        from salience.signals import check_fits
    check_fits(item, expected, model)  # type: ignore[arg-type]


def data_files(
    explanation: Any,
    item: Volume | Signal,
    stem: str,
    *,
    reduce: str = "abs_max",
    alpha: float = 0.5,
    cmap: str | None = None,
    compress: bool = True,
) -> dict[str, bytes]:
    """The files of one explanation of ``item``: raw maps, and per target its picture (and for
    a scan the NIfTI map), named ``STEM[_topK_CLASS].SUFFIX`` (``Explanation.figure_suffix``)."""
    from salience.viz import figure_png

    files: dict[str, bytes] = {}
    files[f"{stem}.npz"], files[f"{stem}.json"] = explanation.to_bytes(compress=compress)
    count = explanation.targets.shape[1]
    names = explanation.target_names
    for k in range(count):
        suffix = explanation.figure_suffix(k)
        title = f"{explanation.method}: {names[0][k] if names else explanation.targets[0, k]}"
        if isinstance(item, Volume):
            from salience.volumes import map_nifti_bytes, montage_figure, volume_map

            saliency = volume_map(explanation.map(0, k), item.shape, reduce)
            figure = montage_figure(item, saliency, alpha=alpha, cmap=cmap, title=title)
            files[f"{stem}{suffix}.nii.gz"] = map_nifti_bytes(saliency, item)
        else:
            from salience.signals import signal_figure, signal_map

            saliency = signal_map(explanation.map(0, k), item.length)
            figure = signal_figure(item, saliency, cmap=cmap, title=title)
        files[f"{stem}{suffix}.png"] = figure_png(figure)
    return files


def input_picture(item: Volume | Signal) -> bytes:
    """The input alone as PNG: a scan's three slices through its centre, a signal's traces."""
    from salience.viz import figure_png

    if isinstance(item, Volume):
        from salience.volumes import montage_figure

        centre = tuple(s // 2 for s in item.shape)
        return figure_png(montage_figure(item, np.zeros(item.shape, np.float32), at=centre))
    from salience.signals import signal_figure

    return figure_png(signal_figure(item, np.zeros(item.length, np.float32)))
