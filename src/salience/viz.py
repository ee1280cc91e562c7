"""Colour saliency maps, overlay them on images, lay them out in grids and write PNG files.

matplotlib is the optional extra ``salience[viz]``: it is imported inside the functions that
need it (colormaps and figures), so the rest of the package works without it. PNG files are
written atomically with Pillow.
"""

from __future__ import annotations

import difflib
import io
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from salience.errors import InvalidInputError, MissingPackageError
from salience.fileio import write_bytes_atomic
from salience.images import as_2d_map, resize_map

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["colorize", "grid_figure", "overlay", "save_grid", "save_png"]

DEFAULT_CMAP = "jet"
DEFAULT_SIGNED_CMAP = "RdBu_r"
SUGGESTED_CMAPS = ("jet", "viridis", "inferno", "hot", "gray", "RdBu_r", "bwr")
GRID_CELL_INCHES = 2.5
COLORBAR_INCHES = 1.0
TITLE_INCHES = 0.4


def _import_matplotlib(feature: str) -> ModuleType:
    """Import matplotlib, or explain how to install the optional extra."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingPackageError(
            f"{feature} needs matplotlib; pip install 'salience[viz]'"
        ) from exc
    return matplotlib


def _colormap(name: str) -> Colormap:
    """The matplotlib colormap called ``name``; unknown names get suggestions."""
    matplotlib = _import_matplotlib("colouring saliency maps")
    if isinstance(name, str) and name in matplotlib.colormaps:
        return matplotlib.colormaps[name]
    close = difflib.get_close_matches(str(name), list(matplotlib.colormaps), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise InvalidInputError(
        f"unknown colormap {name!r}{hint}; use a matplotlib colormap such as "
        f"{', '.join(SUGGESTED_CMAPS)}"
    )


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _has_both_signs(values: np.ndarray) -> bool:
    return bool(np.nanmin(values) < 0 < np.nanmax(values)) if np.isfinite(values).any() else False


def _cmap_name(cmap: str | None, signed: bool) -> str:
    if cmap is not None:
        return cmap
    return DEFAULT_SIGNED_CMAP if signed else DEFAULT_CMAP


def colorize(
    saliency: Any,
    cmap: str | None = None,
    *,
    signed: bool | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    rgba: bool | None = None,
) -> np.ndarray:
    """Colour a 2-D saliency map with a matplotlib colormap.

    Parameters
    ----------
    saliency : array-like
        2-D map (H, W); NaN marks pixels without a value.
    cmap : str or None
        Colormap name, e.g. jet, viridis, inferno, hot, gray, RdBu_r, bwr. None picks
        ``"jet"`` for unsigned maps and the diverging ``"RdBu_r"`` for signed ones.
    signed : bool or None
        Signed maps use a scale symmetric around 0 (-m..m with m = max |map|), so 0 gets
        the colormap's midpoint colour. None: signed when the map has both signs.
    vmin, vmax : float or None
        Override the low/high end of the scale (default: -m/m if signed, else the map's
        min/max). Values outside are clipped to the ends.
    rgba : bool or None
        Add an alpha channel (0 on NaN pixels, 255 elsewhere). None: only if the map has NaN.

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3), or (H, W, 4) RGBA.
    """
    values = as_2d_map(saliency)
    is_signed = _has_both_signs(values) if signed is None else bool(signed)
    colormap = _colormap(_cmap_name(cmap, is_signed))
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        low, high = 0.0, 1.0
    elif is_signed:
        high = float(np.abs(finite).max())
        low = -high
    else:
        low, high = float(finite.min()), float(finite.max())
    if vmin is not None or vmax is not None:
        low = low if vmin is None else float(vmin)
        high = high if vmax is None else float(vmax)
        if not low < high:
            raise InvalidInputError(f"vmin ({low:g}) must be less than vmax ({high:g})")
    if high > low:
        positions = np.clip((values - low) / (high - low), 0.0, 1.0)
    else:  # constant map: neutral midpoint if signed, lowest colour otherwise
        positions = np.where(np.isnan(values), np.nan, 0.5 if is_signed else 0.0)
    colours = colormap(positions, bytes=True)
    missing = np.isnan(values)
    colours[missing, 3] = 0
    with_alpha = bool(missing.any()) if rgba is None else rgba
    return colours if with_alpha else np.ascontiguousarray(colours[..., :3])


def _check_rgb_image(image: Any, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInputError(
            f"{name} must be a uint8 (H, W, 3) RGB array; got {array.dtype} {array.shape}; "
            "load it with salience.images.load_image"
        )
    return array


def overlay(
    image: np.ndarray,
    saliency: Any,
    *,
    alpha: float = 0.5,
    cmap: str | None = None,
    signed: bool | None = None,
) -> np.ndarray:
    """Blend a coloured saliency map over an image.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (H, W, 3) RGB image.
    saliency : array-like
        2-D map (h, w); resized bilinearly to (H, W) if needed. NaN pixels keep the image.
    alpha : float
        Weight of the colour, in [0, 1]: ``alpha * colour + (1 - alpha) * image``.
    cmap, signed
        As in :func:`colorize`.

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3).
    """
    pixels = _check_rgb_image(image)
    if not (_is_real(alpha) and 0.0 <= alpha <= 1.0):
        raise InvalidInputError(f"alpha must be a number between 0 and 1; got {alpha!r}")
    values = as_2d_map(saliency)
    if values.shape != pixels.shape[:2]:
        values = resize_map(values, pixels.shape[:2])
    colours = colorize(values, cmap, signed=signed, rgba=False)
    blended = np.round(alpha * colours + (1.0 - alpha) * pixels).astype(np.uint8)
    missing = np.isnan(values)
    blended[missing] = pixels[missing]
    return blended


def _write_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write PNG bytes to ``path`` atomically (see :mod:`salience.fileio`)."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise InvalidInputError(
            f"{target} does not end in .png; give the output file a .png suffix"
        )
    return write_bytes_atomic(target, data)


def encode_png(image: np.ndarray, *, compress_level: int = 6) -> bytes:
    """A uint8 image encoded as PNG, in memory.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (H, W), (H, W, 3) or (H, W, 4).
    compress_level : int
        zlib level, 0-9: 1 encodes a photo-sized overlay about 4× faster than the default 6,
        in a somewhat larger file.

    Returns
    -------
    bytes
        The PNG file's content.
    """
    array = np.asarray(image)
    valid_shape = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not valid_shape or array.size == 0:
        raise InvalidInputError(
            f"a PNG takes a uint8 (H, W), (H, W, 3) or (H, W, 4) array; "
            f"got {array.dtype} {array.shape}; convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buffer, format="PNG", compress_level=compress_level
    )
    return buffer.getvalue()


def save_png(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 image as PNG, atomically; parent folders are created.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (H, W), (H, W, 3) or (H, W, 4).
    path : str or os.PathLike
        Output file, ending in ``.png``.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    return _write_atomically(path, encode_png(image))


def _check_grid_shape(
    images: Sequence[np.ndarray],
    rows_of_maps: Sequence[Sequence[Any]],
    row_titles: Sequence[str],
    column_titles: Sequence[str],
) -> None:
    if not images:
        raise InvalidInputError("images is empty; give at least one image")
    if len(rows_of_maps) != len(images):
        raise InvalidInputError(
            f"rows_of_maps has {len(rows_of_maps)} rows for {len(images)} images; "
            "give one row of maps per image"
        )
    if len(row_titles) != len(images):
        raise InvalidInputError(
            f"row_titles has {len(row_titles)} titles for {len(images)} images; "
            "give one title per image"
        )
    for index, maps in enumerate(rows_of_maps):
        if len(maps) != len(column_titles):
            raise InvalidInputError(
                f"row {index} has {len(maps)} maps but column_titles names "
                f"{len(column_titles)} methods; give one map per method in every row"
            )


def grid_figure(
    images: Sequence[np.ndarray],
    rows_of_maps: Sequence[Sequence[Any]],
    *,
    row_titles: Sequence[str],
    column_titles: Sequence[str],
    cmap: str | None = None,
    alpha: float = 0.5,
    signed: bool | None = None,
) -> Figure:
    """Build a figure with one row per image: the image, then one overlay per method.

    Uses ``matplotlib.figure.Figure`` with an Agg canvas (no pyplot), so it is thread-safe.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        uint8 (H, W, 3) images, one per row.
    rows_of_maps : sequence of sequences of array-like
        For each image, one 2-D saliency map per method.
    row_titles : sequence of str
        One title per row, e.g. ``"tabby 0.62"``.
    column_titles : sequence of str
        One title per method (the first column is titled ``"input"``).
    cmap, alpha
        As in :func:`overlay`.
    signed : bool or None
        Whether to draw all maps on a symmetric signed scale; None: signed if any map has
        both signs. One colorbar shows the scale.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_grid_shape(images, rows_of_maps, row_titles, column_titles)
    _import_matplotlib("grid_figure")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    maps = [[as_2d_map(m) for m in row] for row in rows_of_maps]
    if signed is None:
        signed = any(_has_both_signs(m) for row in maps for m in row)
    cmap_name = _cmap_name(cmap, signed)
    pictures = [_check_rgb_image(image, f"images[{row}]") for row, image in enumerate(images)]
    aspects = [picture.shape[0] / picture.shape[1] for picture in pictures]  # height / width
    n_columns = 1 + len(column_titles)
    figure = new_figure(
        GRID_CELL_INCHES * n_columns + COLORBAR_INCHES,
        sum(GRID_CELL_INCHES * aspect + TITLE_INCHES for aspect in aspects),
    )
    axes = figure.subplots(
        len(pictures), n_columns, squeeze=False, gridspec_kw={"height_ratios": aspects}
    )
    for row, (pixels, row_maps, title) in enumerate(zip(pictures, maps, row_titles, strict=True)):
        axes[row, 0].imshow(pixels)
        axes[row, 0].set_ylabel(title)
        for column, saliency in enumerate(row_maps, start=1):
            blended = overlay(pixels, saliency, alpha=alpha, cmap=cmap_name, signed=signed)
            axes[row, column].imshow(blended)
    for column, title in enumerate(["input", *column_titles]):
        axes[0, column].set_title(title)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    scale = Normalize(-1.0, 1.0) if signed else Normalize(0.0, 1.0)
    colorbar = figure.colorbar(
        ScalarMappable(norm=scale, cmap=_colormap(cmap_name)),
        ax=axes,
        shrink=0.8,
        label="attribution" if signed else "normalized saliency",
    )
    if signed:
        colorbar.set_ticks([-1.0, 0.0, 1.0], labels=["-max |a|", "0", "+max |a|"])
    else:
        colorbar.set_ticks([0.0, 1.0], labels=["min", "max"])
    return figure


def save_grid(
    path: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    rows_of_maps: Sequence[Sequence[Any]],
    *,
    row_titles: Sequence[str],
    column_titles: Sequence[str],
    cmap: str | None = None,
    alpha: float = 0.5,
    signed: bool | None = None,
    dpi: int = 100,
) -> Path:
    """Render :func:`grid_figure` to PNG and write it atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, ending in ``.png``; parent folders are created.
    images, rows_of_maps, row_titles, column_titles, cmap, alpha, signed
        As in :func:`grid_figure`.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    figure = grid_figure(
        images,
        rows_of_maps,
        row_titles=row_titles,
        column_titles=column_titles,
        cmap=cmap,
        alpha=alpha,
        signed=signed,
    )
    return save_figure(figure, path, dpi=dpi)


def new_figure(width: float, height: float, feature: str = "plots") -> Figure:
    """A matplotlib ``Figure`` of ``width``×``height`` inches with an Agg canvas (no pyplot).

    Figures made this way are independent of pyplot's global state, so threads may draw at once.
    """
    _import_matplotlib(feature)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure, *, dpi: int = 100) -> bytes:
    """``figure`` rendered as PNG, in memory."""
    if not (_is_real(dpi) and dpi > 0):
        raise InvalidInputError(f"dpi must be a positive number; got {dpi!r}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Render ``figure`` to PNG and write it atomically; return the written path."""
    return _write_atomically(path, figure_png(figure, dpi=dpi))
