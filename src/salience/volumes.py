"""3-D volumes (CT, MRI): reading scans, the slice montage, and the map written back as NIfTI.

A scan is read from NIfTI (``.nii``, ``.nii.gz``, with ``nibabel``) or ``.npy`` into a
:class:`Volume`: voxels ``(C, D, H, W)`` in the order the file stores them (no reorientation,
so a map of the same shape lies in the scan's space), the affine from voxel indices to
millimetres and the voxel spacing. The model takes ``volume.tensor()``, ``(1, C, D, H, W)``.

The display is a montage of three slices through the map's peak, one perpendicular to each of
the scan's axes, named axial, coronal and sagittal from the affine's orientation; the scan is
shown through an intensity window and the map blended over it. :func:`save_map_nifti` writes
the map with the scan's affine and header, so it opens over the scan in any NIfTI viewer.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from salience.arrays import ArrayFileError, check_input_shape, check_size, read_npy
from salience.errors import InvalidInputError, MissingPackageError
from salience.fileio import write_bytes_atomic
from salience.postprocess import reduce_channels, upsample
from salience.viz import ColorScale, add_colorbar, cmap_name, colorize, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".npy")
DEFAULT_MAX_VOXELS = 64 * 2**20
"""The most voxels (all channels) a scan may have: 256 MiB as float32."""
MAX_CHANNELS = 16
"""A 4-D NIfTI's last axis is read as channels (modalities, echoes) up to this many."""
VIEWS = ("axial", "coronal", "sagittal")
_VIEW_OF_AXIS_CODE = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal"}


def is_volume_file(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` ends in a suffix a scan is read from (``.nii``, ``.nii.gz``)."""
    return str(name).lower().endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class Volume:
    """A scan: voxels, their geometry and where they came from.

    Attributes
    ----------
    data : numpy.ndarray
        float32 ``(C, D, H, W)``, the spatial axes in the file's order.
    affine : numpy.ndarray
        ``(4, 4)`` voxel indices → millimetres (the identity for ``.npy``).
    label : str
        The file's name.
    header : object, optional
        The NIfTI header, kept to write the map in the same space.
    """

    data: np.ndarray
    affine: np.ndarray
    label: str = "volume"
    header: Any = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial shape ``(D, H, W)``."""
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along each axis (the affine's column norms)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def tensor(self) -> Tensor:
        """The scan as a batch of one, ``(1, C, D, H, W)`` float32."""
        return torch.from_numpy(np.ascontiguousarray(self.data)).unsqueeze(0)

    def geometry(self) -> dict[str, Any]:
        """What an :class:`~salience.explanation.Explanation` stores of the scan."""
        return {
            "modality": "volume",
            "source": self.label,
            "shape": list(self.shape),
            "channels": int(self.data.shape[0]),
            "spacing": list(self.spacing),
            "affine": self.affine.tolist(),
            "axes": list(axis_views(self.affine)),
        }


def load_volume(path: str | os.PathLike[str], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read a scan from NIfTI or ``.npy``.

    A NIfTI may be 3-D, or 4-D with channels last (at most :data:`MAX_CHANNELS`); a ``.npy``
    holds ``(D, H, W)`` or ``(C, D, H, W)`` and is read without unpickling. The size in the
    header is checked against ``max_voxels`` before any voxel is read.

    Raises
    ------
    ArrayFileError
        For a file that is not a scan, of another rank, too large, or with non-finite voxels.
    """
    file = Path(path)
    if str(file).lower().endswith(".npy"):
        data = read_npy(file, max_values=max_voxels)
        return Volume(_channels_first(data, file.name, channels_last=False), np.eye(4), file.name)
    nibabel = _import_nibabel()
    if not file.is_file():
        raise ArrayFileError(f"{file} does not exist or is not a file; check the path")
    try:
        image = nibabel.load(str(file))
        shape = tuple(int(s) for s in image.shape)
        check_size(file.name, shape, max_voxels)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except ArrayFileError:
        raise
    except Exception as error:  # nibabel raises many kinds for a damaged file
        reason = str(error).replace(str(file), file.name)  # the file's name, not where it lies
        raise ArrayFileError(f"{file.name} is not a readable NIfTI scan ({reason})") from None
    if not np.isfinite(data).all():
        raise ArrayFileError(
            f"{file.name} holds NaN or infinite voxels; replace them before explaining"
        )
    affine = np.asarray(image.affine, dtype=np.float64)
    volume = _channels_first(data, file.name, channels_last=True)
    return Volume(volume, affine, file.name, image.header.copy())


def _channels_first(data: np.ndarray, label: str, *, channels_last: bool) -> np.ndarray:
    """``(C, D, H, W)`` from a 3-D array or a 4-D one with channels first or last."""
    if data.ndim == 3:
        return data[None]
    if data.ndim == 4:
        channels = data.shape[-1] if channels_last else data.shape[0]
        if channels <= MAX_CHANNELS:
            return np.moveaxis(data, -1, 0) if channels_last else data
    where = "last" if channels_last else "first"
    raise ArrayFileError(
        f"{label} has shape {data.shape}; a scan is 3-D (D, H, W) or 4-D with at most "
        f"{MAX_CHANNELS} channels {where}"
    )


def _import_nibabel() -> Any:
    try:
        import nibabel
    except ImportError:
        raise MissingPackageError(
            "reading NIfTI scans needs nibabel; pip install nibabel"
        ) from None
    return nibabel


def check_fits(volume: Volume, expected: tuple[int | None, ...] | None, model: str) -> None:
    """Refuse a scan whose shape is not the ``(N, C, D, H, W)`` the model takes (None: no check)."""
    check_input_shape(
        (1, *volume.data.shape),
        expected,
        model=model,
        label=volume.label,
        kind="volumes",
        fix="resample or crop the scan to that shape",
    )


def axis_views(affine: np.ndarray) -> tuple[str, str, str]:
    """The view perpendicular to each array axis: ``("sagittal", "coronal", "axial")`` for RAS.

    An axis pointing superior–inferior is cut by axial slices, anterior–posterior by coronal,
    left–right by sagittal; read from the affine's orientation codes.
    """
    nibabel = _import_nibabel()
    codes = nibabel.aff2axcodes(affine)
    views = tuple(_VIEW_OF_AXIS_CODE.get(code, "sagittal") for code in codes)
    return views if sorted(views) == sorted(VIEWS) else ("sagittal", "coronal", "axial")  # type: ignore[return-value]


def volume_map(
    explanation_map: Tensor, shape: tuple[int, int, int], reduce: str = "abs_max"
) -> np.ndarray:
    """One target's map ``(C, d, h, w)`` or ``(d, h, w)`` as ``(D, H, W)`` float32 at the scan's
    shape: channels reduced, a coarser grid upsampled trilinearly."""
    saliency = explanation_map.detach().float().cpu()
    if saliency.ndim == 4:
        saliency = reduce_channels(saliency, reduce, dim=0)
    if saliency.ndim != 3:
        raise InvalidInputError(
            f"a volume's map is (D, H, W) or (C, D, H, W), got shape {tuple(saliency.shape)}"
        )
    if tuple(saliency.shape) != tuple(shape):
        saliency = upsample(saliency, tuple(shape))
    return saliency.numpy()


def peak(saliency: np.ndarray) -> tuple[int, int, int]:
    """The voxel of the map's largest value (first in storage order on ties)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(saliency)), saliency.shape))  # type: ignore[return-value]


def intensity_window(
    data: np.ndarray, window: tuple[float, float] | None = None, percentiles=(1.0, 99.0)
) -> np.ndarray:
    """Voxels mapped to ``[0, 1]`` through ``window = (low, high)`` (e.g. ``(-1000, 400)``
    Hounsfield units for a CT lung window); by default the 1st–99th percentiles."""
    low, high = window if window is not None else np.percentile(data, percentiles)
    if not high > low:
        high = low + 1.0
    return np.clip((data - low) / (high - low), 0.0, 1.0)


def slices_through(
    volume: Volume, at: tuple[int, int, int]
) -> list[tuple[str, tuple[Any, ...], float]]:
    """The axial, coronal and sagittal slices through the voxel ``at``.

    Returns
    -------
    list of (view, index, aspect)
        The view's name, the index of its slice into a ``(D, H, W)`` array and the height /
        width of a pixel once drawn with the slice's second axis upward.
    """
    views = axis_views(volume.affine)
    spacing = volume.spacing
    result = []
    for view in VIEWS:
        axis = views.index(view)
        index: list[Any] = [slice(None)] * 3
        index[axis] = at[axis]
        first, second = (a for a in range(3) if a != axis)
        result.append((view, tuple(index), spacing[second] / spacing[first]))
    return result


def blend_slice(
    scan: np.ndarray,
    saliency: np.ndarray,
    scale: tuple[float, float],
    *,
    alpha: float = 0.5,
    cmap: str | None = "jet",
) -> np.ndarray:
    """One slice of the map blended over the same slice of the windowed scan (values in
    ``[0, 1]``), coloured on the map's ``scale = (low, high)``; its opacity grows with the map's
    value up to ``alpha``.

    Returns
    -------
    numpy.ndarray
        RGB in ``[0, 1]``, laid out as viewers show a RAS scan: the slice's first array axis
        left to right, its second upward (the first row is its last index).
    """
    low, high = scale
    gray = np.repeat(scan[..., None], 3, axis=2)
    colours = colorize(saliency, cmap, signed=False, vmin=low, vmax=max(high, low + 1e-12))
    weight = alpha * ((saliency - low) / max(high - low, 1e-12))[..., None]
    blended = weight * colours[..., :3] / 255.0 + (1 - weight) * gray
    return np.clip(np.transpose(blended, (1, 0, 2)), 0.0, 1.0)[::-1]


def montage_figure(
    volume: Volume,
    saliency: np.ndarray,
    *,
    window: tuple[float, float] | None = None,
    alpha: float = 0.5,
    cmap: str | None = "jet",
    title: str | None = None,
    at: tuple[int, int, int] | None = None,
    label: str = "attribution",
) -> Figure:
    """The three slices through the voxel ``at`` (by default the map's peak), the map blended
    over the windowed scan (its opacity grows with the map's value up to ``alpha``, so the scan
    shows where it is low).

    Each slice is drawn with its voxel spacing as aspect ratio and its second array axis
    upward, as viewers show a RAS scan; the colour scale is the map's over the whole volume,
    read back by the colorbar on the right (numbers in the map's units, named by ``label``).
    """
    scan = intensity_window(volume.data[0], window)
    at = peak(saliency) if at is None else at
    low, high = float(saliency.min()), float(saliency.max())
    figure = new_figure(10.0, 3.4, "volume montage")
    axes = figure.subplots(1, 3)
    for ax, (view, index, aspect) in zip(axes, slices_through(volume, at), strict=True):
        shown = blend_slice(scan[index], saliency[index], (low, high), alpha=alpha, cmap=cmap)
        ax.imshow(shown, aspect=aspect)
        ax.set_title(f"{view} {next(i for i in index if isinstance(i, int))}")
        ax.set_axis_off()
    scale = ColorScale("all", cmap_name(cmap, False), low, max(high, low + 1e-12), label)
    add_colorbar(figure, scale, ax=list(axes))
    if title:
        figure.suptitle(title)
    return figure


def save_montage(
    path: str | os.PathLike[str], volume: Volume, saliency: np.ndarray, **options: Any
) -> Path:
    """Write :func:`montage_figure` as a PNG, atomically."""
    return save_figure(montage_figure(volume, saliency, **options), path)


def map_nifti_bytes(saliency: np.ndarray, volume: Volume, *, compress: bool = True) -> bytes:
    """The map ``(D, H, W)`` as a NIfTI file with the scan's affine and header (float32)."""
    nibabel = _import_nibabel()
    if tuple(saliency.shape) != volume.shape:
        raise InvalidInputError(
            f"the map {tuple(saliency.shape)} is not in the scan's shape {volume.shape}; "
            "resize it with salience.volumes.volume_map"
        )
    header = None if volume.header is None else volume.header.copy()
    image = nibabel.Nifti1Image(np.asarray(saliency, dtype=np.float32), volume.affine, header)
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if compress else data


def save_map_nifti(path: str | os.PathLike[str], saliency: np.ndarray, volume: Volume) -> Path:
    """Write the map as NIfTI (gzipped for ``.nii.gz``) in the scan's space, atomically."""
    target = Path(path)
    if not is_volume_file(target):
        raise InvalidInputError(f"{target} does not end in .nii or .nii.gz; give it that suffix")
    compress = str(target).lower().endswith(".gz")
    return write_bytes_atomic(target, map_nifti_bytes(saliency, volume, compress=compress))
