"""Scans, signals and feature rows uploaded to the server: their kind, their checks, their maps.

An upload named ``.nii``, ``.nii.gz``, ``.npy`` or ``.csv`` is read as ``salience explain``
reads the file (:mod:`salience.modalities`, :mod:`salience.tabular`): a NIfTI is a scan, a
``.npy`` a scan or a signal by its rank, a CSV a signal for a model that declares ``(N, C, L)``
inputs and rows of features otherwise. It is read when the request comes, within the server's
limits (a file's declared size is checked before any value is read), and checked against the
model, so a file that does not fit is refused at once with what the model expects.

A :class:`DataJob` draws each map with the renderers of its kind: a scan's slice montage through
the map's peak (``overlay.png``) and the map as NIfTI in the scan's space (``map.nii.gz``), with
each axial slice drawn on request for the page's slider; a signal's traces with the saliency
band; a table's signed bar charts per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from salience.loading import LoadedModel
from salience.modalities import SIGNAL, bytes_as_file, input_kind, load_data
from salience.server.jobs import Job
from salience.server.limits import Limits, RequestRejectedError
from salience.server.service import RenderedMap, map_meta, npy_bytes
from salience.signals import Signal
from salience.tabular import Rows
from salience.volumes import Volume

ROWS = "rows"
DATA_SUFFIXES = (".nii", ".nii.gz", ".npy", ".csv")
"""The upload names read as a scan, a signal or a table rather than an image."""
BYTES_PER_VALUE = 12
"""Estimated bytes a pending scan or signal holds per value: the float32 data, the model's
input tensor and one map of its size."""
NPY = "application/octet-stream"


def is_data_upload(filename: str | None) -> bool:
    """Whether an upload's file name says it is a scan, a signal or a table."""
    return bool(filename) and str(filename).lower().endswith(DATA_SUFFIXES)


@dataclass(frozen=True, eq=False)
class DataUpload:
    """A scan, signal or table read from an upload and checked against the model.

    Attributes
    ----------
    item : Volume, Signal or Rows
        What the file holds.
    kind : str
        ``"volume"``, ``"signal"`` or ``"rows"``.
    size : int
        The upload's bytes.
    """

    item: Volume | Signal | Rows
    kind: str
    size: int

    @property
    def memory(self) -> int:
        """Bytes the request holds while it waits and runs (an estimate)."""
        item = self.item
        values = item.values.size if isinstance(item, Rows) else item.data.size
        return self.size + int(values) * BYTES_PER_VALUE

    def tensor(self) -> Any:
        """The model's input: ``(1, C, *S)`` for a scan or signal, ``(N, F)`` for rows."""
        import torch

        if isinstance(self.item, Rows):
            return torch.from_numpy(self.item.values).float()
        return self.item.tensor()


def upload_kind(filename: str, path: Any, loaded: LoadedModel) -> str:
    """The kind of an uploaded file, as the command line decides it: a CSV is a signal for a
    model that declares ``(N, C, L)`` inputs, else rows of features."""
    from salience.models.loader import takes_signals

    if str(filename).lower().endswith(".csv"):
        return SIGNAL if takes_signals(loaded.adapter) else ROWS
    return input_kind(path)


def read_data_upload(
    data: bytes,
    filename: str,
    loaded: LoadedModel,
    limits: Limits,
    features: str | None = None,
) -> DataUpload:
    """Read and check an uploaded scan, signal or table (blocking: call it off the event loop).

    ``features`` names a table's columns the model takes, in its order (``age,amount``; None:
    every numeric column), as ``salience explain --features`` does.

    Raises
    ------
    RequestRejectedError
        400 for an empty file, 413 for one over the upload limit.
    TooLargeError
        (413) For a declared size over ``limits.max_values`` or more than ``limits.max_rows``
        rows, refused before the values are read.
    InvalidInputError
        (400) For a file that is not a scan, signal or table, or does not fit the model: the
        message says what the model expects.
    """
    from salience.modalities import check_data_fits
    from salience.models.loader import declared_input_shape, input_width
    from salience.tabular import parse_features, read_rows

    name = _safe_name(filename)
    if not data:
        raise RequestRejectedError(400, "empty_file", f"the uploaded {name} is empty; send a file")
    if len(data) > limits.max_upload_bytes:
        raise RequestRejectedError(
            413,
            "too_large",
            f"{name} is {len(data):,} bytes, over the limit of {limits.max_upload_bytes:,}; "
            "send a smaller file",
        )
    with bytes_as_file(data, name) as path:
        kind = upload_kind(name, path, loaded)
        if kind == ROWS:
            rows = read_rows(
                path,
                parse_features(features),
                width=input_width(loaded.adapter),
                max_rows=limits.max_rows,
            )
            return DataUpload(rows, ROWS, len(data))
        item = load_data(path, kind, max_values=limits.max_values)
    check_data_fits(item, declared_input_shape(loaded.adapter), loaded.name)
    return DataUpload(item, kind, len(data))


def _safe_name(filename: str) -> str:
    """The upload's file name without folders, shortened, for messages and the temporary file."""
    from pathlib import PurePosixPath, PureWindowsPath

    name = PureWindowsPath(PurePosixPath(str(filename)).name).name.strip()
    for suffix in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name[: -len(suffix)])
            return (stem[:80] or "upload") + name[-len(suffix) :].lower()
    return "upload"


@dataclass(frozen=True)
class Slices:
    """What a scan's map keeps for its axial slices, one byte per voxel.

    Attributes
    ----------
    scan : numpy.ndarray
        uint8 ``(D, H, W)``: the scan through its intensity window (shared by the job's maps).
    saliency : numpy.ndarray
        uint8 ``(D, H, W)``: the map on its own scale, 0 its lowest value, 255 its highest.
    axis : int
        The array axis axial slices cut.
    """

    scan: np.ndarray
    saliency: np.ndarray
    axis: int

    @property
    def count(self) -> int:
        """The number of axial slices."""
        return int(self.scan.shape[self.axis])

    def png(self, index: int, *, alpha: float, cmap: str | None) -> bytes:
        """Axial slice ``index``, the map blended over the scan as in the montage."""
        from salience.render import encode
        from salience.volumes import blend_slice

        if not 0 <= index < self.count:
            raise RequestRejectedError(
                404,
                "not_found",
                f"no axial slice {index}; the scan has {self.count} (0 to {self.count - 1})",
            )
        cut: list[Any] = [slice(None)] * 3
        cut[self.axis] = index
        rgb = blend_slice(
            self.scan[tuple(cut)] / 255.0,
            self.saliency[tuple(cut)].astype(np.float32),
            (0.0, 255.0),
            alpha=alpha,
            cmap=cmap,
        )
        return encode(np.round(rgb * 255.0).astype(np.uint8))


class DataJob(Job):
    """A :class:`~salience.server.jobs.Job` on a scan, a signal or rows of features."""

    def __init__(self, model: LoadedModel, upload: DataUpload, *args: Any, **kw: Any) -> None:
        super().__init__(model, upload, *args, **kw)
        self.kind = upload.kind
        self.geometry = None if isinstance(upload.item, Rows) else upload.item.geometry()
        self.slices: dict[int, Slices] = {}
        self._scan: np.ndarray | None = None

    def _prepare(self) -> tuple[Any, Any]:
        from salience.modalities import input_picture

        upload: DataUpload = self.upload
        item, tensor = upload.item, upload.tensor()
        if not isinstance(item, Rows):
            self.view_png = input_picture(item)
        probabilities = {} if isinstance(item, Rows) else self._probabilities(tensor)

        def draw(explanation: Any) -> list[RenderedMap]:
            if isinstance(item, Rows):
                return [self._draw_rows(explanation.with_features(item.features), item)]
            explanation = explanation.with_geometry(item.geometry())
            return self._draw_data(explanation, item, probabilities)

        return tensor, draw

    def _draw_data(
        self, explanation: Any, item: Volume | Signal, probabilities: dict[int, float]
    ) -> list[RenderedMap]:
        """Per target: the picture, the raw map and, for a scan, the NIfTI map and its slices."""
        from salience.modalities import data_files

        display = self.display
        written = data_files(
            explanation, item, "map", reduce=display.reduce, alpha=display.alpha, cmap=display.cmap
        )
        rendered = []
        for k in range(explanation.targets.shape[1]):
            suffix = explanation.figure_suffix(k)
            raw = explanation.map(0, k).detach().float().cpu().numpy()
            meta = {**map_meta(explanation, k, probabilities), "native_shape": list(raw.shape)}
            files = {
                "overlay.png": (written[f"map{suffix}.png"], "image/png"),
                "map.npy": (npy_bytes(raw), NPY),
            }
            if isinstance(item, Volume):
                files["map.nii.gz"] = (written[f"map{suffix}.nii.gz"], "application/gzip")
                meta["volume"] = self._keep_slices(len(self.maps) + len(rendered), raw, item)
            rendered.append(RenderedMap(meta, files))
        return rendered

    def _keep_slices(self, index: int, raw: np.ndarray, volume: Volume) -> dict[str, Any]:
        """Keep map ``index`` for its axial slices; return what the page's slider needs."""
        import torch

        from salience.volumes import intensity_window, peak, slices_through, volume_map

        saliency = volume_map(torch.from_numpy(raw), volume.shape, self.display.reduce)
        if self._scan is None:
            window = intensity_window(volume.data[0])
            self._scan = np.round(window * 255.0).astype(np.uint8)
        low, high = float(saliency.min()), float(saliency.max())
        scaled = (saliency - low) / max(high - low, 1e-12) * 255.0
        at = peak(saliency)
        axial = next(entry for entry in slices_through(volume, at) if entry[0] == "axial")
        axis = next(a for a, part in enumerate(axial[1]) if isinstance(part, int))
        self.slices[index] = Slices(self._scan, np.round(scaled).astype(np.uint8), axis)
        return {
            "shape": list(volume.shape),
            "peak": list(at),
            "axial_axis": axis,
            "slices": volume.shape[axis],
            "aspect": axial[2],
        }

    def _draw_rows(self, explanation: Any, rows: Rows) -> RenderedMap:
        """The signed bar chart of each row's top features (first target), and the raw maps."""
        from salience.tabular_plots import chart_titles, rows_figure
        from salience.viz import figure_png

        first = explanation.attributions[:, 0].double().numpy()
        chart = figure_png(rows_figure(first, rows.features, chart_titles(explanation)))
        meta = {
            **map_meta(explanation, 0, {}),
            "native_shape": list(first.shape),
            "features": list(rows.features),
            "rows": len(rows),
        }
        files = {
            "overlay.png": (chart, "image/png"),
            "map.npy": (npy_bytes(explanation.attributions.float().numpy()), NPY),
        }
        return RenderedMap(meta, files)

    def _kept_bytes(self) -> int:
        kept = sum(int(s.saliency.nbytes) for s in self.slices.values())
        return super()._kept_bytes() + kept + (0 if self._scan is None else self._scan.nbytes)

    def snapshot(self, base: str = "/api/jobs") -> dict[str, Any]:
        """The job's JSON, with the input's kind and geometry and each scan map's slice URL."""
        found = super().snapshot(base)
        found["modality"] = self.kind
        found["geometry"] = self.geometry
        for i, entry in enumerate(found["maps"]):
            if i in self.slices:
                entry["files"]["slices"] = f"{base}/{self.id}/maps/{i}/slices/{{index}}.png"
        return found

    def slice_png(self, index: int, axial: int) -> bytes:
        """Axial slice ``axial`` of scan map ``index``, drawn now.

        Raises
        ------
        RequestRejectedError
            404 when the job has no such scan map or slice.
        """
        kept = self.slices.get(index)
        if kept is None:
            raise RequestRejectedError(
                404, "not_found", f"job {self.id} has no map {index} of a scan"
            )
        return kept.png(axial, alpha=self.display.alpha, cmap=self.display.cmap)
