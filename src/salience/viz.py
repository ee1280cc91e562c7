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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from salience.errors import InvalidInputError, MissingPackageError
from salience.fileio import write_bytes_atomic
from salience.images import as_2d_map, resize_map

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = [
    "SIGNS",
    "ColorScale",
    "color_scale",
    "colorize",
    "grid_figure",
    "overlay",
    "save_grid",
    "save_png",
]

DEFAULT_CMAP = "jet"
DEFAULT_SIGNED_CMAP = "RdBu_r"
SUGGESTED_CMAPS = ("jet", "viridis", "inferno", "hot", "gray", "RdBu_r", "bwr")
GRID_CELL_INCHES = 2.5
COLORBAR_INCHES = 0.9
TITLE_INCHES = 0.55
MAX_COLUMNS = 4
"""Panels per grid row: a wider grid wraps onto further rows."""

Sign = Literal["auto", "all", "absolute_value", "positive", "negative"]
SIGNS: tuple[str, ...] = ("auto", "all", "absolute_value", "positive", "negative")
"""How a map's sign is shown (Captum's ``sign``): ``all`` on a diverging scale centred on zero
(-m..m, m = max |map|); ``absolute_value``, ``positive`` and ``negative`` on a sequential scale
from zero (|map|, its positive part, the magnitude of its negative part); ``auto``: ``all`` for a
map with both signs, else ``absolute_value``."""
DIVERGING_CMAPS = frozenset(
    name + suffix
    for name in (
        "PiYG",
        "PRGn",
        "BrBG",
        "PuOr",
        "RdGy",
        "RdBu",
        "RdYlBu",
        "RdYlGn",
        "Spectral",
        "coolwarm",
        "bwr",
        "seismic",
        "berlin",
        "managua",
        "vanimo",
    )
    for suffix in ("", "_r")
)
"""Colormaps whose middle is their neutral colour: on a sequential (magnitude) scale only their
upper half is used, so zero keeps the neutral colour and never looks like a negative value."""


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


def cmap_name(cmap: str | None, signed: bool) -> str:
    """``cmap``, or the default colormap of a signed (diverging) or unsigned map."""
    if cmap is not None:
        return cmap
    return DEFAULT_SIGNED_CMAP if signed else DEFAULT_CMAP


def check_sign(sign: str) -> str:
    """``sign`` if it names a display mode of :data:`SIGNS`; else a one-line error."""
    if sign not in SIGNS:
        raise InvalidInputError(f"unknown sign {sign!r}; choose one of {', '.join(SIGNS)}")
    return sign


@dataclass(frozen=True)
class ColorScale:
    """How the values of one map become colours, and the colorbar that reads them back.

    Attributes
    ----------
    sign : str
        The resolved display mode: ``all``, ``absolute_value``, ``positive`` or ``negative``.
    cmap : str
        The matplotlib colormap's name.
    low, high : float
        The values, in the map's own units, at the two ends of the colorbar (``-m`` and ``m``
        for ``all``, ``0`` and the largest shown value otherwise).
    label : str
        What the colorbar's numbers are.
    """

    sign: str
    cmap: str
    low: float
    high: float
    label: str = "attribution"

    @property
    def half(self) -> bool:
        """True when a diverging colormap shows a magnitude: only its upper half is used."""
        return self.sign != "all" and self.cmap in DIVERGING_CMAPS

    def shown_values(self, values: np.ndarray) -> np.ndarray:
        """The values the colours stand for: the map, |map|, or one of its parts."""
        if self.sign == "absolute_value":
            return np.abs(values)
        if self.sign == "positive":
            return np.where(np.isnan(values), np.nan, np.maximum(values, 0.0))
        if self.sign == "negative":
            return np.where(np.isnan(values), np.nan, np.maximum(-values, 0.0))
        return values

    def fraction(self, values: Any) -> np.ndarray:
        """Where a map's values lie on the colorbar, from 0 (:attr:`low`) to 1 (NaN kept)."""
        shown = self.shown_values(np.asarray(values, dtype=np.float64))
        with np.errstate(invalid="ignore"):
            return np.clip((shown - self.low) / (self.high - self.low), 0.0, 1.0)

    def positions(self, values: Any) -> np.ndarray:
        """Positions in [0, 1] on the colormap :attr:`cmap` of a map's values (NaN kept)."""
        where = self.fraction(values)
        return 0.5 + 0.5 * where if self.half else where

    def colormap(self) -> Colormap:
        """The colours from :attr:`low` to :attr:`high` (the upper half of a diverging map)."""
        full = _colormap(self.cmap)
        if not self.half:
            return full
        from matplotlib.colors import ListedColormap

        return ListedColormap(full(np.linspace(0.5, 1.0, 128)), name=f"{self.cmap}_upper")

    def colours(self, values: Any, *, rgba: bool | None = None) -> np.ndarray:
        """uint8 RGB (or RGBA, 0 on NaN) colours of a 2-D map."""
        return colorize(self.positions(as_2d_map(values)), self.cmap, vmin=0.0, vmax=1.0, rgba=rgba)


def color_scale(
    saliency: Any, sign: str = "auto", cmap: str | None = None, *, label: str = "attribution"
) -> ColorScale:
    """The colour scale of one map, chosen from its own values.

    Parameters
    ----------
    saliency : array-like
        The map in its own units (NaN: no value).
    sign : str
        One of :data:`SIGNS`.
    cmap : str or None
        A matplotlib colormap; None: ``RdBu_r`` for ``all``, ``jet`` for the others.
    label : str
        What the values are; the colorbar's label adds the sign mode (``|label|`` ...).
    """
    check_sign(sign)
    values = np.asarray(saliency, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if sign == "auto":
        sign = "all" if _has_both_signs(values) else "absolute_value"
    if cmap is not None:
        _colormap(cmap)  # an unknown name fails with suggestions
    name = cmap_name(cmap, sign == "all")
    if sign == "all":
        top = float(np.abs(finite).max()) if finite.size else 0.0
    elif finite.size:
        parts = {"absolute_value": np.abs(finite), "positive": finite, "negative": -finite}
        top = float(max(parts[sign].max(), 0.0))
    else:
        top = 0.0
    top = top if top > 0 else 1.0  # an all-zero map: zero at its neutral end
    magnitude = label if finite.size and finite.min() >= 0 else f"|{label}|"
    words = {
        "all": label,
        "absolute_value": magnitude,
        "positive": f"{label} > 0",
        "negative": f"-({label}) where < 0",
    }
    return ColorScale(sign, name, -top if sign == "all" else 0.0, top, words[sign])


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
    colormap = _colormap(cmap_name(cmap, is_signed))
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


def as_rgb_image(image: Any, name: str = "image") -> np.ndarray:
    """A uint8 ``(H, W, 3)`` RGB image of an RGB or grayscale ``(H, W)`` / ``(H, W, 1)`` one.

    Anything else is refused in one line.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == np.uint8 and array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    return _check_rgb_image(array, name)


def _check_overlay_map(saliency: Any) -> np.ndarray:
    """A 2-D map, or a one-line error that says how to make one of an input-sized map."""
    values = np.asarray(saliency, dtype=np.float64)
    if values.ndim == 3 and values.shape[0] in (1, 3, 4) and values.shape[0] < values.shape[1]:
        if values.shape[0] == 1:
            return as_2d_map(values[0])
        raise InvalidInputError(
            f"the map has {values.shape[0]} channels {values.shape}; reduce the channels first, "
            "e.g. salience.postprocess.reduce_channels(map, 'abs_max'), or use "
            "explanation.overlay(image), which does"
        )
    return as_2d_map(values)


def overlay(
    image: np.ndarray,
    saliency: Any,
    *,
    alpha: float = 0.5,
    cmap: str | None = None,
    signed: bool | None = None,
    sign: str | None = None,
    scale: ColorScale | None = None,
) -> np.ndarray:
    """Blend a coloured saliency map over an image.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (H, W, 3) RGB or (H, W) grayscale image.
    saliency : array-like
        2-D map (h, w); resized bilinearly to (H, W) if needed. NaN pixels keep the image. A
        ``(3, h, w)`` map is refused: reduce its channels first.
    alpha : float
        Weight of the colour, in [0, 1]: ``alpha * colour + (1 - alpha) * image``.
    cmap, signed
        As in :func:`colorize` (when neither ``sign`` nor ``scale`` is given).
    sign : str, optional
        A display mode of :data:`SIGNS`: the map gets its own :func:`color_scale`.
    scale : ColorScale, optional
        A scale made before (e.g. of the map at another resolution).

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3).
    """
    pixels = as_rgb_image(image)
    if not (_is_real(alpha) and 0.0 <= alpha <= 1.0):
        raise InvalidInputError(f"alpha must be a number between 0 and 1; got {alpha!r}")
    values = _check_overlay_map(saliency)
    if values.shape != pixels.shape[:2]:
        values = resize_map(values, pixels.shape[:2])
    if scale is None and sign is not None:
        scale = color_scale(values, sign, cmap)
    if scale is not None:
        colours = scale.colours(values, rgba=False)
    else:
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
    sign: str = "auto",
    scales: Sequence[Sequence[ColorScale]] | None = None,
    max_columns: int = MAX_COLUMNS,
    label: str = "attribution",
) -> Figure:
    """Build a figure with, per image, the image and one overlay per method, each with its colorbar.

    Every map gets its own colour scale (:func:`color_scale`), so one signed method does not
    wash out the others. An image with more than ``max_columns`` panels wraps onto further rows.
    Uses ``matplotlib.figure.Figure`` with an Agg canvas (no pyplot), so it is thread-safe.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        uint8 (H, W, 3) RGB or (H, W) grayscale images, one per row.
    rows_of_maps : sequence of sequences of array-like
        For each image, one 2-D saliency map per method, in the map's own units.
    row_titles : sequence of str
        One title per image, e.g. ``"chelsea: tabby 62.0%"``, above the image.
    column_titles : sequence of str
        One title per method (its name and key options), above its overlay.
    cmap, alpha
        As in :func:`overlay`; ``cmap`` None picks per map (:func:`color_scale`).
    sign : str
        One of :data:`SIGNS`, applied to each map on its own.
    scales : sequence of sequences of ColorScale, optional
        The scale of each map, made before (as :func:`salience.render.render` does); then
        ``sign`` and ``cmap`` are not used.
    max_columns : int
        Panels per row of the figure (>= 2).
    label : str
        What the maps' values are, for the colorbars.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_grid_shape(images, rows_of_maps, row_titles, column_titles)
    if not (isinstance(max_columns, int) and max_columns >= 2):
        raise InvalidInputError(f"max_columns must be an int >= 2, got {max_columns!r}")
    check_sign(sign)
    _import_matplotlib("grid_figure")

    maps = [[as_2d_map(m) for m in row] for row in rows_of_maps]
    if scales is None:
        scales = [[color_scale(m, sign, cmap, label=label) for m in row] for row in maps]
    pictures = [as_rgb_image(image, f"images[{row}]") for row, image in enumerate(images)]
    panels = 1 + len(column_titles)
    columns = min(panels, max_columns)
    lines = -(-panels // columns)
    aspects = [picture.shape[0] / picture.shape[1] for picture in pictures]  # height / width
    heights = [aspect for aspect in aspects for _ in range(lines)]
    figure = new_figure(
        (GRID_CELL_INCHES + COLORBAR_INCHES) * columns,
        sum(GRID_CELL_INCHES * h + TITLE_INCHES for h in heights),
    )
    axes = figure.subplots(
        len(heights), columns, squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_axis_off()
    titles = ["", *column_titles]
    for row, (pixels, row_maps, title) in enumerate(zip(pictures, maps, row_titles, strict=True)):
        cells = [axes[row * lines + i // columns, i % columns] for i in range(panels)]
        cells[0].set_axis_on()
        cells[0].imshow(pixels)
        cells[0].set_title(_wrapped(title), fontsize="medium")
        for index, saliency in enumerate(row_maps, start=1):
            scale = scales[row][index - 1]
            cell = cells[index]
            cell.set_axis_on()
            cell.imshow(overlay(pixels, saliency, alpha=alpha, scale=scale))
            cell.set_title(_wrapped(titles[index]), fontsize="medium")
            add_colorbar(figure, scale, ax=cell)
    return figure


MAP_FIGURE_DPI = 100
COLORBAR_PIXELS = 140


def title_pixels(title: str) -> int:
    """The height of :func:`map_figure`'s title band: the overlay's first row lies below it."""
    return 8 + 16 * (title.count("\n") + 1)


def map_figure(picture: np.ndarray, scale: ColorScale, title: str) -> Figure:
    """One overlay under its title, with the colorbar of its scale (numbers in map units).

    The overlay's pixels are copied one to one (rows ``title_pixels(title)`` on, columns from
    0), not resampled.
    """
    _import_matplotlib("map_figure")
    pixels = as_rgb_image(picture)
    height, width = pixels.shape[:2]
    top, bottom = title_pixels(title), 6
    size = (width + COLORBAR_PIXELS, max(height, 64) + top + bottom)
    figure = new_figure(size[0] / MAP_FIGURE_DPI, size[1] / MAP_FIGURE_DPI)
    figure.set_layout_engine("none")
    figure.figimage(pixels, xo=0, yo=size[1] - top - height, origin="upper")
    figure.text(4 / size[0], 1 - 4 / size[1], title, ha="left", va="top", fontsize=9)
    bar = (
        (width + 10) / size[0],
        (size[1] - top - height) / size[1],
        14 / size[0],
        height / size[1],
    )
    add_colorbar(figure, scale, cax=figure.add_axes(bar), sizes=(8, 7))
    return figure


def add_colorbar(
    figure: Figure,
    scale: ColorScale,
    *,
    ax: Any = None,
    cax: Any = None,
    sizes: tuple[Any, Any] = ("small", "small"),
) -> Any:
    """Draw the colorbar of ``scale`` (numbers in the map's units, labelled) beside ``ax``
    or into ``cax``; ``sizes`` are the label's and the numbers' font sizes."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(Normalize(scale.low, scale.high), cmap=scale.colormap())
    if cax is None:
        colorbar = figure.colorbar(mappable, ax=ax, fraction=0.07, pad=0.03)
    else:
        colorbar = figure.colorbar(mappable, cax=cax)
    colorbar.set_label(scale.label, fontsize=sizes[0])
    colorbar.ax.tick_params(labelsize=sizes[1])
    return colorbar


def _wrapped(title: str, width: int = 30) -> str:
    """A title broken into lines of about ``width`` characters (its own line breaks kept)."""
    import textwrap

    return "\n".join(
        textwrap.fill(line, width, break_long_words=True) or line for line in title.splitlines()
    )


def save_grid(
    path: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    rows_of_maps: Sequence[Sequence[Any]],
    *,
    row_titles: Sequence[str],
    column_titles: Sequence[str],
    cmap: str | None = None,
    alpha: float = 0.5,
    sign: str = "auto",
    scales: Sequence[Sequence[ColorScale]] | None = None,
    max_columns: int = MAX_COLUMNS,
    label: str = "attribution",
    dpi: int = 100,
) -> Path:
    """Render :func:`grid_figure` to PNG and write it atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, ending in ``.png``; parent folders are created.
    images, rows_of_maps, row_titles, column_titles, cmap, alpha, sign, scales, max_columns, label
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
        sign=sign,
        scales=scales,
        max_columns=max_columns,
        label=label,
    )
    return save_figure(figure, path, dpi=dpi)


def figure_png(figure: Figure, *, dpi: int = 100) -> bytes:
    """A figure rendered to PNG bytes."""
    if not (_is_real(dpi) and dpi > 0):
        raise InvalidInputError(f"dpi must be a positive number; got {dpi!r}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


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


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Render ``figure`` to PNG and write it atomically; return the written path."""
    return _write_atomically(path, figure_png(figure, dpi=dpi))
