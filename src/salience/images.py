"""Load, validate and preprocess images, and map saliency back onto the original image.

Everything here uses Pillow, numpy, scipy and torch only (no torchvision). The resize and
centre-crop rules follow torchvision's ``Resize(int)`` + ``CenterCrop``, and squashing follows
PIL's ``image.resize((W, H))``, so that presets match the transforms the models were trained
with. Images are converted to the model's channels (grey levels or RGB); 16-bit and float grey
levels reach the model at full precision.

The work is bounded by what the model and the display need, never by what a file claims: the
pixel limit is checked from the header before decoding, the model's crop is resampled straight
from the region of the image it covers (the whole resized image is never made), JPEGs are
decoded at a reduced size when that still leaves twice the resolution needed, and overlays are
drawn on a copy at most :data:`DISPLAY_MAX_SIDE` pixels on its longer side.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError
from scipy import ndimage

from salience.errors import InvalidInputError, SalienceError, UnsupportedError
from salience.postprocess import upsample

__all__ = [
    "CHANNEL_COUNTS",
    "IMAGENET_PRESET",
    "INTERPOLATIONS",
    "RESIZE_MODES",
    "CropGeometry",
    "ImageLoadError",
    "ImagePreset",
    "PreparedImage",
    "as_2d_map",
    "load_image",
    "resize_map",
]

DEFAULT_MAX_PIXELS = 50_000_000
DISPLAY_MAX_SIDE = 2048
"""Longer side of the copy of an image that overlays are drawn on (``PreparedImage.original``)."""
READABLE_FORMATS = "PNG, JPEG, BMP, TIFF, WebP"
INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
"""Pillow's resampling filters, by the names presets and ``--interpolation`` take."""
RESIZE_MODES = ("shorter", "squash")
"""``shorter``: the shorter side to ``resize_shorter``, keeping the aspect ratio, then the centre
crop (torchvision's ``Resize(int)`` + ``CenterCrop``); ``squash``: stretched to the input size,
the aspect ratio not kept (PIL's ``image.resize((W, H))``, the common Keras pipeline)."""
CHANNEL_COUNTS = (1, 3)
"""The channels an image is prepared with: grey levels or RGB."""
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_DEPTH_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError)
# Pillow's format plugins reject a file that is not theirs with one of these (as Image.open).
_NOT_THIS_FORMAT = (SyntaxError, IndexError, TypeError, struct.error)
# A reduced decode keeps at least this factor over the resolution it feeds (as Image.thumbnail
# does), so the resampling after it still filters properly.
_REDUCING_GAP = 2.0
# The display copy only ever shrinks: an area average, as fast as it is alias-free.
_DISPLAY_RESAMPLE = Image.Resampling.BOX
# float64 temporaries of at most 32 MiB when scaling 16-bit and float images to 8 bits
_BLOCK_ELEMENTS = 1 << 22

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray
_Box = tuple[float, float, float, float]
"""(left, top, right, bottom), in pixels, as Pillow's boxes."""

_T = Image.Transpose
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}
# where a point (x, y) of a (w, h) image lands under each transposition
_TRANSPOSED_POINT: dict[
    Image.Transpose, Callable[[float, float, int, int], tuple[float, float]]
] = {
    _T.FLIP_LEFT_RIGHT: lambda x, y, w, h: (w - x, y),
    _T.FLIP_TOP_BOTTOM: lambda x, y, w, h: (x, h - y),
    _T.ROTATE_180: lambda x, y, w, h: (w - x, h - y),
    _T.TRANSPOSE: lambda x, y, w, h: (y, x),
    _T.ROTATE_90: lambda x, y, w, h: (y, w - x),
    _T.ROTATE_270: lambda x, y, w, h: (h - y, x),
    _T.TRANSVERSE: lambda x, y, w, h: (h - y, w - x),
}
_SWAPS_AXES = frozenset({_T.TRANSPOSE, _T.ROTATE_90, _T.ROTATE_270, _T.TRANSVERSE})

# (label, height, width) of the full upright image -> the (height, width) resolution wanted
_DecodePlan = Callable[[str, int, int], tuple[int, int]]


class ImageLoadError(SalienceError, ValueError):
    """An image that cannot be loaded: missing, unreadable, corrupt or too large."""


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_pixel_count(label: str, height: int, width: int, max_pixels: int) -> None:
    pixels = height * width
    if pixels > max_pixels:
        raise ImageLoadError(
            f"{label} has {pixels:,} pixels, more than the limit of {max_pixels:,}; "
            "downscale it or raise max_pixels"
        )


def _blocks(count: int) -> Iterator[slice]:
    """Consecutive slices of at most ``_BLOCK_ELEMENTS`` covering ``range(count)``."""
    return (slice(start, start + _BLOCK_ELEMENTS) for start in range(0, count, _BLOCK_ELEMENTS))


def _rescale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly onto ``0..255`` with rounding (float64, in bounded blocks)."""
    flat = np.ascontiguousarray(values).reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    factor = 255.0 / (high - low)
    for block in _blocks(flat.size):
        scaled = np.round((flat[block].astype(np.float64) - low) * factor)
        out[block] = np.clip(scaled, 0, 255)
    return out.reshape(values.shape)


def _check_finite(label: str, values: np.ndarray) -> None:
    """Refuse a float image with NaN or infinite pixels, saying how many (of how many)."""
    finite = np.isfinite(values)
    if values.ndim == 3:
        finite = finite.all(axis=2)
    bad = finite.size - int(np.count_nonzero(finite))
    if bad:
        raise ImageLoadError(
            f"{label} has {bad:,} of {finite.size:,} pixels that are NaN or infinite; replace "
            "them with finite values (e.g. numpy.nan_to_num) and load the result"
        )


def _high_depth_range(image: Image.Image, values: np.ndarray) -> tuple[float, float] | None:
    """The sample values a 16-bit, 32-bit integer or float image's 0 and 1 are (None: constant).

    ``I;16*`` modes and ``I`` images within 0..65535 are taken as 16-bit samples, ``F`` images
    within [0, 1] as unit-range floats; anything else is min-max stretched.
    """
    low, high = float(values.min()), float(values.max())
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and low >= 0 and high <= 65535):
        return 0.0, 65535.0
    if image.mode == "F" and low >= 0 and high <= 1:
        return 0.0, 1.0
    return None if high == low else (low, high)


def _high_depth_to_uint8(image: Image.Image, label: str) -> np.ndarray:
    """Grey levels of a 16-bit, 32-bit integer or float image as uint8, scaled as
    :func:`_high_depth_range` says. Float images with NaN or infinite pixels are refused
    (:class:`ImageLoadError`).
    """
    values = np.asarray(image)
    if image.mode == "F":
        _check_finite(label, values)
    scale = _high_depth_range(image, values)
    if scale is None:
        return np.zeros(values.shape, dtype=np.uint8)
    return _rescale_to_uint8(values, *scale)


def _unit_range(image: Image.Image, label: str, window: tuple[float, float] | None) -> np.ndarray:
    """The grey levels of a single-channel image as float32 in [0, 1], at full precision.

    With ``window`` (low, high, in the file's own sample values), ``low..high`` maps onto
    ``0..1`` and values outside are clipped; without it, high-depth images are scaled as
    :func:`_high_depth_range` says and 8-bit ones by 255.
    """
    values = np.asarray(image)
    if image.mode == "F":
        _check_finite(label, values)
    if window is not None:
        scale: tuple[float, float] | None = window
    elif image.mode not in _HIGH_DEPTH_MODES:
        scale = (0.0, 255.0)
    else:
        scale = _high_depth_range(image, values)
    if scale is None:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = scale
    flat = np.ascontiguousarray(values).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    for block in _blocks(flat.size):
        scaled = (flat[block].astype(np.float64) - low) / (high - low)
        out[block] = np.clip(scaled, 0.0, 1.0)
    return out.reshape(values.shape)


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Convert any Pillow mode to RGB (``image`` itself if RGB); transparency goes over white."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_high_depth_to_uint8(image, label)).convert("RGB")
    try:
        if image.has_transparency_data:
            rgba = image if image.mode == "RGBA" else image.convert("RGBA")
            white = Image.new("RGB", image.size, (255, 255, 255))
            white.paste(rgba, mask=rgba)  # the same pixels as alpha_composite, in less memory
            return white
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(
            f"Pillow cannot convert mode {image.mode!r} to RGB ({exc}); convert the image to "
            "RGB, RGBA or L first"
        ) from exc


def _to_gray(image: Image.Image, label: str) -> Image.Image:
    """Convert any Pillow mode to 8-bit grey levels (``L``), as Pillow's ``convert("L")``.

    Colours are weighted by ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B) and
    transparency goes over white first, as for :func:`_to_rgb`.
    """
    if image.mode == "L" and not image.has_transparency_data:
        return image
    return _to_rgb(image, label).convert("L")


_SINGLE_CHANNEL_MODES = _HIGH_DEPTH_MODES | {"L", "LA", "1"}


@dataclass(frozen=True)
class _Conversion:
    """What a decoded image is converted to: its channels, an intensity window, and whether
    the grey levels of a high-depth image are kept at full precision (``_Decoded.values``)."""

    channels: int = 3
    window: tuple[float, float] | None = None
    precise: bool = False


def _converted(
    image: Image.Image, label: str, conversion: _Conversion
) -> tuple[Image.Image, Image.Image | None]:
    """The 8-bit image the model's input is cut from (``L`` or ``RGB``), and the full-precision
    grey levels in [0, 1] (mode ``F``) of a high-depth or windowed image when they are kept."""
    channels, window = conversion.channels, conversion.window
    if window is not None and image.mode not in _SINGLE_CHANNEL_MODES:
        raise ImageLoadError(
            f"{label} is a {image.mode} image, and an intensity window is for single-channel "
            "(grayscale) images; convert it to grayscale first or drop the window"
        )
    if window is not None:
        samples = image.getchannel(0) if image.mode == "LA" else image
        values = Image.fromarray(
            _unit_range(samples.convert("L") if samples.mode == "1" else samples, label, window)
        )
        eight_bit = Image.fromarray(_rescale_to_uint8(np.asarray(values), 0.0, 1.0))
        return (eight_bit if channels == 1 else eight_bit.convert("RGB")), values
    values = None
    if conversion.precise and image.mode in _HIGH_DEPTH_MODES:
        values = Image.fromarray(_unit_range(image, label, None))
    return (_to_gray(image, label) if channels == 1 else _to_rgb(image, label)), values


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """Check an (H, W), (H, W, 3) or (H, W, 4) array and turn it into an L/RGB/RGBA image."""
    valid_shape = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if not valid_shape or array.size == 0:
        raise ImageLoadError(
            f"array of shape {array.shape} is not an image; pass (H, W), (H, W, 3) or (H, W, 4)"
        )
    if array.dtype == np.uint8:
        data = array
    elif array.dtype == np.uint16:
        if array.ndim == 2:  # kept at 16 bits, as a 16-bit PNG is
            return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16))
        data = _rescale_to_uint8(array, 0.0, 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        _check_finite("float image array", array)
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ImageLoadError(
                f"float image values must lie in [0, 1], got [{low:g}, {high:g}]; "
                "divide 0..255 values by 255"
            )
        if array.ndim == 2:  # kept at full precision, as a float TIFF is
            return Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
        data = _rescale_to_uint8(array, 0.0, 1.0)
    else:
        raise ImageLoadError(
            f"image arrays of dtype {array.dtype} are not supported; "
            "use uint8, uint16 or float in [0, 1]"
        )
    return Image.fromarray(np.ascontiguousarray(data))


def _identify(stream: IO[bytes], filename: str) -> ImageFile.ImageFile:
    """Open an image lazily, as ``Image.open`` does, without Pillow's decompression-bomb check.

    ``Image.open`` warns about or refuses images over the process-wide
    ``PIL.Image.MAX_IMAGE_PIXELS``. Asking the format plugins directly reads the header alone,
    so the caller applies its own limit and never changes the one other threads rely on.

    Raises
    ------
    PIL.UnidentifiedImageError
        If no plugin recognizes the data.
    """
    Image.init()
    prefix = stream.read(16)
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        verdict = not accept or accept(prefix)
        if not verdict or isinstance(verdict, str):  # a string says why the plugin cannot
            continue
        stream.seek(0)
        try:
            return factory(stream, filename)
        except _NOT_THIS_FORMAT:
            continue
    raise UnidentifiedImageError(f"cannot identify image file {filename or 'data'}")


def _shrunk_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) scaled down to ``max_side`` on the longer side; unchanged if smaller."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _transposed_box(box: _Box, size: tuple[int, int], method: Image.Transpose) -> _Box:
    """Where ``box`` of an image of ``size`` (width, height) lies after ``transpose(method)``."""
    move = _TRANSPOSED_POINT[method]
    (x0, y0), (x1, y1) = (move(x, y, *size) for x, y in ((box[0], box[1]), (box[2], box[3])))
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


@dataclass(frozen=True)
class _Decoded:
    """A decoded image, upright, perhaps at a reduced size (JPEG), and where it came from.

    Attributes
    ----------
    image : PIL.Image.Image
        RGB or ``L`` (8-bit grey levels, for a 1-channel model), EXIF orientation applied.
    size : tuple of int
        (height, width) of the full upright image.
    extent : tuple of float
        Where the full image lies in ``image``'s pixels (a reduced JPEG may leave a fraction
        of its last row and column unused).
    """

    image: Image.Image
    size: tuple[int, int]
    extent: _Box
    values: Image.Image | None = None
    """Grey levels in [0, 1] at full precision (mode ``F``, the size of ``image``) for a
    high-depth or windowed image, else None."""

    def resample(
        self,
        region: _Box,
        size: tuple[int, int],
        resample: Image.Resampling,
        reducing_gap: float | None = None,
        *,
        values: bool = False,
    ) -> Image.Image:
        """``region`` of the full image (its pixels) resampled to ``size`` (width, height).

        Only the pixels the region's filter reaches are read; a region that is the whole
        image at its own size is ``image`` itself. ``values`` resamples :attr:`values`.
        """
        source = self.values if values and self.values is not None else self.image
        height, width = self.size
        left, top, right, bottom = self.extent
        scale_x, scale_y = (right - left) / width, (bottom - top) / height
        limit_x, limit_y = self.image.size
        box = (
            min(max(left + region[0] * scale_x, 0.0), limit_x),
            min(max(top + region[1] * scale_y, 0.0), limit_y),
            min(max(left + region[2] * scale_x, 0.0), limit_x),
            min(max(top + region[3] * scale_y, 0.0), limit_y),
        )
        if size == source.size and box == (0, 0, *source.size):
            return source
        return source.resize(size, resample, box=box, reducing_gap=reducing_gap)


def _bomb_error(label: str, exc: Image.DecompressionBombError) -> ImageLoadError:
    return ImageLoadError(
        f"{label} is over Pillow's decompression-bomb limit ({exc}); downscale it or raise "
        "PIL.Image.MAX_IMAGE_PIXELS"
    )


@contextlib.contextmanager
def _decode_errors(label: str) -> Iterator[None]:
    """Turn Pillow's decoding errors into one-line ``ImageLoadError``."""
    try:
        yield
    except Image.DecompressionBombError as exc:  # some plugins check Pillow's limit on decoding
        raise _bomb_error(label, exc) from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(
            f"{label} is truncated or corrupt ({exc}); re-export or re-download it"
        ) from exc


def _decode(
    image: Image.Image,
    label: str,
    max_pixels: int,
    plan: _DecodePlan | None,
    own: bool,
    conversion: _Conversion = _Conversion(),
) -> _Decoded:
    """Size-check from the header, decode (reduced where ``plan`` allows), convert, upright.

    ``own`` says the image was opened here: it may then be decoded at a reduced size, and is
    converted without a copy; a caller's image is never changed.
    """
    _check_pixel_count(label, image.height, image.width, max_pixels)
    with _decode_errors(label):  # reading a PNG's EXIF may decode it
        method = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    height, width = image.height, image.width
    if method in _SWAPS_AXES:
        height, width = width, height
    extent: _Box = (0.0, 0.0, float(image.width), float(image.height))
    if plan is not None:
        wanted_height, wanted_width = plan(label, height, width)
        if own:
            wanted = (
                (wanted_height, wanted_width)
                if method in _SWAPS_AXES
                else (wanted_width, wanted_height)
            )
            reduced = image.draft(None, wanted)  # JPEG only: decode at 1/2, 1/4 or 1/8
            if reduced is not None:
                extent = reduced[1]
    with _decode_errors(label):
        image.load()
    if method is not None:
        extent = _transposed_box(extent, image.size, method)
        image, own = ImageOps.exif_transpose(image), True  # a new image, orientation cleared
    converted, values = _converted(image, label, conversion)
    if converted is image and not own:  # never hand back the caller's own image
        converted = image.copy()
    return _Decoded(converted, (height, width), extent, values)


def _load(
    source: ImageSource,
    max_pixels: int,
    plan: _DecodePlan | None = None,
    conversion: _Conversion = _Conversion(),
) -> _Decoded:
    """:func:`load_image`'s work; ``plan`` is asked, before decoding, what resolution is needed,
    and ``conversion`` says what the image is converted to."""
    if not _is_positive_int(max_pixels):
        raise InvalidInputError(f"max_pixels must be a positive int; got {max_pixels!r}")
    if isinstance(source, np.ndarray):
        label = f"array of shape {source.shape}"
        if source.ndim >= 2:
            _check_pixel_count(label, *source.shape[:2], max_pixels)
        return _decode(_array_to_pil(source), label, max_pixels, plan, True, conversion)
    if isinstance(source, Image.Image):
        return _decode(source, "the PIL image", max_pixels, plan, False, conversion)
    if isinstance(source, bytes | bytearray | memoryview):
        label, filename = f"image data ({len(source):,} bytes)", ""
        stream: IO[bytes] = io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        label = filename = str(path)
        if not path.is_file():
            problem = "is a directory" if path.is_dir() else "does not exist"
            raise ImageLoadError(f"{label} {problem}; give the path of an image file")
        try:
            stream = path.open("rb")
        except OSError as exc:
            raise ImageLoadError(
                f"{label} cannot be opened ({exc}); check its permissions"
            ) from exc
    else:
        raise UnsupportedError(
            "source must be a path, bytes, a PIL image or a numpy array; "
            f"got {type(source).__name__}"
        )
    with stream:
        try:
            opened = _identify(stream, filename)
        except UnidentifiedImageError:
            raise ImageLoadError(
                f"{label} is not an image Pillow can read ({READABLE_FORMATS})"
            ) from None
        except Image.DecompressionBombError as exc:
            raise _bomb_error(label, exc) from exc
        except OSError as exc:
            hint = "check its permissions" if filename else "is it complete?"
            raise ImageLoadError(f"{label} cannot be opened ({exc}); {hint}") from exc
        return _decode(opened, label, max_pixels, plan, True, conversion)


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load an image from a path, bytes, a PIL image or a numpy array, as RGB.

    Parameters
    ----------
    source : str, os.PathLike, bytes, PIL.Image.Image or numpy.ndarray
        A PNG/JPEG/BMP/TIFF/WebP file or its bytes, a PIL image of any mode, or an
        (H, W), (H, W, 3) or (H, W, 4) array of uint8, uint16 or float in [0, 1].
    max_pixels : int
        Largest accepted ``height * width``; checked from the header before decoding. It
        replaces Pillow's decompression-bomb limit for this load, which stays as it is for
        everything else in the process (it is never changed).

    Returns
    -------
    PIL.Image.Image
        RGB image with EXIF orientation applied, 16-bit data scaled to 8 bits and
        transparency composited over white.

    Raises
    ------
    ImageLoadError
        If the file is missing, not an image, truncated/corrupt, or too large, or if a float
        image (a TIFF of mode ``F``, a float array) has NaN or infinite pixels: they are
        refused, not guessed at, since any value put there would be explained as if it had
        been measured. The message says how many there are.
    """
    return _load(source, max_pixels).image


def as_2d_map(saliency: Any, *, name: str = "saliency") -> np.ndarray:
    """Return ``saliency`` as a finite-or-NaN 2-D float64 array, or raise ``ValueError``.

    Parameters
    ----------
    saliency : array-like
        A 2-D map (h, w); NaN marks pixels without a value.
    name : str
        Name used in error messages.
    """
    values = np.asarray(saliency, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise InvalidInputError(
            f"{name} must be a non-empty 2-D map (h, w); got shape {values.shape}; "
            "squeeze batch and channel axes first"
        )
    if np.isinf(values).any():
        raise InvalidInputError(f"{name} contains infinite values; clip them or use np.nan_to_num")
    return values


def resize_map(saliency: Any, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map bilinearly (pixel-centre aligned, antialiased when shrinking).

    Parameters
    ----------
    saliency : array-like
        2-D map (h, w).
    size : tuple of int
        Target (height, width).

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``size``; NaN spreads to the pixels it touches.
    """
    values = as_2d_map(saliency)
    height, width = size
    if not (_is_positive_int(height) and _is_positive_int(width)):
        raise InvalidInputError(
            f"size must be a (height, width) pair of positive ints; got {size!r}"
        )
    if values.shape == (height, width):
        return values.copy()
    return upsample(torch.from_numpy(values), (height, width), antialias=True).numpy()


@dataclass(frozen=True)
class CropGeometry:
    """Where the model's input came from in the original image.

    Attributes
    ----------
    original_size : tuple of int
        (height, width) of the image maps are drawn on: the loaded image, or a smaller copy
        of all of it (:attr:`PreparedImage.original`), since resizing maps the whole image
        onto the whole image whatever its size.
    resized_size : tuple of int
        (height, width) after resizing the loaded image.
    crop_box : tuple of int
        (top, left, height, width) of the crop, in resized coordinates.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        top, left, height, width = self.crop_box
        resized_height, resized_width = self.resized_size
        sizes = (*self.original_size, resized_height, resized_width, height, width)
        fits = 0 <= top <= resized_height - height and 0 <= left <= resized_width - width
        if not (all(map(_is_positive_int, sizes)) and fits):
            raise InvalidInputError(
                f"crop_box {self.crop_box} (top, left, height, width) must lie inside "
                f"resized_size {self.resized_size}, and all sizes must be positive ints"
            )

    def to_original(self, saliency: Any) -> np.ndarray:
        """Map a saliency map on the crop back onto the original image.

        Parameters
        ----------
        saliency : array-like
            2-D map covering the crop, at any resolution (resized bilinearly to the crop).

        Returns
        -------
        numpy.ndarray
            float64 map of shape ``original_size``; pixels outside the crop (never seen by
            the model) are NaN.
        """
        top, left, crop_height, crop_width = self.crop_box
        on_crop = resize_map(saliency, (crop_height, crop_width))
        scale_y = self.resized_size[0] / self.original_size[0]
        scale_x = self.resized_size[1] / self.original_size[1]
        # Original pixel centre i + 0.5 lands at (i + 0.5) * scale - top in continuous crop
        # coordinates, i.e. at array index (i + 0.5) * scale - top - 0.5 of the crop map.
        mapped = ndimage.affine_transform(
            on_crop,
            (scale_y, scale_x),
            offset=(0.5 * scale_y - top - 0.5, 0.5 * scale_x - left - 0.5),
            output_shape=self.original_size,
            order=1,
            mode="nearest",
        )
        mapped[~_centres_inside(self.original_size[0], scale_y, top, crop_height), :] = np.nan
        mapped[:, ~_centres_inside(self.original_size[1], scale_x, left, crop_width)] = np.nan
        return mapped


def _centres_inside(count: int, scale: float, start: int, length: int) -> np.ndarray:
    """Which of ``count`` original pixel centres fall inside the crop span along one axis."""
    position = (np.arange(count) + 0.5) * scale - start
    return (position >= 0) & (position <= length)


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """An image ready for a model, with what is needed to show and map results back.

    Attributes
    ----------
    tensor : torch.Tensor
        float32 (1, C, h, w), normalized; C is the preset's channels.
    display : numpy.ndarray
        uint8 (h, w, 3): the resized and cropped image the model saw (for a 1-channel model,
        its grey levels in each of R, G and B).
    original : numpy.ndarray
        uint8 (H0, W0, 3): the loaded image, converted as for the model (grey for a
        1-channel model), shrunk to at most ``display_max_side`` pixels on
        its longer side (:data:`DISPLAY_MAX_SIDE` by default) when larger: what overlays are
        drawn on.
    geometry : CropGeometry
        How ``display`` was cut from ``original``; ``geometry.to_original`` maps onto it.
    source_size : tuple of int
        (height, width) of the loaded image at full size, EXIF orientation applied.
    """

    tensor: torch.Tensor
    display: np.ndarray
    original: np.ndarray
    geometry: CropGeometry
    source_size: tuple[int, int]


def _per_channel(name: str, values: Any, channels: int) -> tuple[float, ...]:
    """``values`` as one float per channel: ``channels`` values, or one for every channel."""
    given = tuple(float(v) for v in values)
    if len(given) == 1:
        return given * channels
    if len(given) != channels:
        what = "one per RGB channel" if channels == 3 else "the model takes 1 channel"
        raise InvalidInputError(
            f"{name} must have {channels} values ({what}) or 1 for every channel; got {len(given)}"
        )
    return given


def _window(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not all(map(math.isfinite, pair)) or not pair[0] < pair[1]:
        raise InvalidInputError(
            f"intensity_window must be (low, high) with low < high, finite; got {value!r}, "
            "e.g. --intensity-window 0,4095"
        )
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ImagePreset:
    """Resize, crop, channels and normalization of a model's input.

    Attributes
    ----------
    resize_shorter : int or None
        With ``resize_mode="shorter"``: resize so the shorter side has this length, keeping the
        aspect ratio (the longer side is truncated to an int, as torchvision does); None keeps
        the size. Unused when squashing.
    crop : int, tuple of int or None
        Centre-crop size, ``n`` or ``(height, width)``; None keeps the whole image. When
        squashing, the size the whole image is stretched to.
    mean, std : tuple of float
        Per-channel normalization applied to values in [0, 1]: one value per channel (RGB
        order), or one for every channel.
    interpolation : str
        A name of :data:`INTERPOLATIONS`: ``"bicubic"``, ``"bilinear"``, ``"nearest"``, ...
    resize_mode : str
        ``"shorter"`` (resize the shorter side, then centre-crop) or ``"squash"`` (stretch the
        whole image to ``crop``, as PIL's ``image.resize((W, H))``): :data:`RESIZE_MODES`.
    channels : int
        1 (grey levels: colours weighted by ITU-R 601-2 luma, as Pillow's ``convert("L")``)
        or 3 (RGB).
    intensity_window : tuple of float, optional
        ``(low, high)``: an intensity window in the file's own sample values (a 16-bit PNG's
        0..65535, an 8-bit image's 0..255), mapped onto [0, 1] and clipped, before the
        normalization; for single-channel images.
    """

    resize_shorter: int | None
    crop: int | tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shorter"
    channels: int = 3
    intensity_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.resize_shorter is not None and not _is_positive_int(self.resize_shorter):
            raise InvalidInputError(
                f"resize_shorter must be a positive int or None; got {self.resize_shorter!r}"
            )
        crop = (self.crop, self.crop) if _is_positive_int(self.crop) else self.crop
        valid_crop = crop is None or (
            isinstance(crop, tuple) and len(crop) == 2 and all(map(_is_positive_int, crop))
        )
        if not valid_crop:
            raise InvalidInputError(
                "crop must be a positive int, a (height, width) pair of positive ints or None; "
                f"got {self.crop!r}"
            )
        object.__setattr__(self, "crop", crop)
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidInputError(
                f"resize_mode must be one of {', '.join(map(repr, RESIZE_MODES))}; "
                f"got {self.resize_mode!r}"
            )
        if self.resize_mode == "squash" and crop is None:
            raise InvalidInputError(
                "squashing stretches the image to the model's input size: give it (crop, "
                "the preset's size, --size)"
            )
        if self.channels not in CHANNEL_COUNTS:
            raise InvalidInputError(
                f"channels must be 1 (grayscale) or 3 (RGB); got {self.channels!r}"
            )
        object.__setattr__(self, "mean", _per_channel("mean", self.mean, self.channels))
        std = _per_channel("std", self.std, self.channels)
        if min(std) <= 0:
            raise InvalidInputError(f"std values must be positive; got {std}")
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "intensity_window", _window(self.intensity_window))
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidInputError(
                f"interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}; "
                f"got {self.interpolation!r}"
            )

    def with_channels(self, channels: int) -> ImagePreset:
        """This preset for a model of ``channels`` channels.

        The normalization follows: RGB values become one grey value (their mean, as timm
        does for grayscale models) and one value serves every RGB channel.
        """
        if channels == self.channels:
            return self

        def adapted(values: tuple[float, ...]) -> tuple[float, ...]:
            return (sum(values) / len(values),) if channels == 1 else values[:1]

        return replace(self, channels=channels, mean=adapted(self.mean), std=adapted(self.std))

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_mode == "squash":
            return self.crop  # type: ignore[return-value]
        if self.resize_shorter is None:
            return height, width
        if height <= width:
            return self.resize_shorter, max(1, int(self.resize_shorter * width / height))
        return max(1, int(self.resize_shorter * height / width)), self.resize_shorter

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        if self.crop is None:
            return 0, 0, height, width
        crop_height, crop_width = self.crop  # type: ignore[misc]
        if crop_height > height or crop_width > width:
            raise InvalidInputError(
                f"crop {crop_height}x{crop_width} is larger than the resized image "
                f"{height}x{width}; use a smaller crop or a larger resize_shorter"
            )
        top = round((height - crop_height) / 2)
        left = round((width - crop_width) / 2)
        return top, left, crop_height, crop_width

    def _decode_plan(self, max_pixels: int, display_max_side: int) -> _DecodePlan:
        """What :meth:`prepare` checks before decoding, and the resolution it needs."""

        def plan(label: str, height: int, width: int) -> tuple[int, int]:
            resized = self._resized_size(height, width)
            if self.crop is None and resized[0] * resized[1] > max_pixels:
                raise ImageLoadError(
                    f"{label} ({height}x{width}) would be resized to {resized[0]}x{resized[1]} "
                    f"= {resized[0] * resized[1]:,} pixels for the model, more than the limit of "
                    f"{max_pixels:,}; give the preset a crop, crop the image to a less elongated "
                    "shape, or raise max_pixels"
                )
            self._crop_box(*resized)  # a crop that does not fit is refused before decoding
            shown = _shrunk_size(height, width, display_max_side)
            return (
                min(height, max(1, math.ceil(max(resized[0], shown[0]) * _REDUCING_GAP))),
                min(width, max(1, math.ceil(max(resized[1], shown[1]) * _REDUCING_GAP))),
            )

        return plan

    def prepare(
        self,
        image: ImageSource,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        display_max_side: int = DISPLAY_MAX_SIDE,
    ) -> PreparedImage:
        """Load, convert to the preset's channels, resize, crop and normalize an image.

        The grey levels of a 16-bit or float image reach the model at full precision (scaled
        to [0, 1] by the bit depth, or by the preset's intensity window); the 8-bit copies are for
        display. With ``resize_mode="squash"`` the whole image is stretched to the input
        size, the same pixels as PIL's ``image.resize((W, H), filter)``. The crop is resampled
        straight from the region of the image it covers, so the work is bounded by the crop
        and the display copy, however elongated the image (pixels equal to resizing the whole
        image and cropping it, to within one grey level). JPEGs
        are decoded at 1/2, 1/4 or 1/8 of their size when that still leaves twice the
        resolution the resize and the display copy need.

        Parameters
        ----------
        image : str, os.PathLike, bytes, PIL.Image.Image or numpy.ndarray
            Anything :func:`load_image` accepts.
        max_pixels : int
            Passed to :func:`load_image`; without a crop it also bounds the resized image.
        display_max_side : int
            Longer side of :attr:`PreparedImage.original` at most (the image is never enlarged).

        Returns
        -------
        PreparedImage

        Raises
        ------
        ImageLoadError
            As :func:`load_image`, and when a preset without a crop would resize the image to
            more than ``max_pixels`` (checked from the header, before decoding).
        """
        if not _is_positive_int(display_max_side):
            raise InvalidInputError(
                f"display_max_side must be a positive int; got {display_max_side!r}"
            )
        decoded = _load(
            image,
            max_pixels,
            self._decode_plan(max_pixels, display_max_side),
            _Conversion(self.channels, self.intensity_window, precise=True),
        )
        height, width = decoded.size
        resized_height, resized_width = self._resized_size(height, width)
        top, left, crop_height, crop_width = box = self._crop_box(resized_height, resized_width)
        region = (
            left * width / resized_width,
            top * height / resized_height,
            (left + crop_width) * width / resized_width,
            (top + crop_height) * height / resized_height,
        )
        interpolation = INTERPOLATIONS[self.interpolation]
        seen = np.array(decoded.resample(region, (crop_width, crop_height), interpolation))
        model_input: np.ndarray = seen
        if decoded.values is not None:  # the full-precision grey levels, not the 8-bit ones
            fine = decoded.resample(region, (crop_width, crop_height), interpolation, values=True)
            model_input = np.clip(np.asarray(fine, dtype=np.float32), 0.0, 1.0)  # filters ring
        shown_height, shown_width = _shrunk_size(height, width, display_max_side)
        shown = decoded.resample(
            (0.0, 0.0, width, height),
            (shown_width, shown_height),
            _DISPLAY_RESAMPLE,
            reducing_gap=_REDUCING_GAP,  # filter tables grow with the factor: reduce() first
        )
        del decoded
        geometry = CropGeometry(
            original_size=(shown_height, shown_width),
            resized_size=(resized_height, resized_width),
            crop_box=box,
        )
        return PreparedImage(
            tensor=self.normalize(model_input),
            display=_as_rgb_array(seen),
            original=_as_rgb_array(np.array(shown)),
            geometry=geometry,
            source_size=(height, width),
        )

    def _channel_tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def normalize(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Scale values to [0, 1] if uint8, then apply ``(x - mean) / std``.

        Parameters
        ----------
        image : numpy.ndarray or torch.Tensor
            numpy (H, W, C), or (H, W) for one channel; torch (C, H, W) or (N, C, H, W); uint8
            or float in [0, 1]; C is the preset's :attr:`channels`.

        Returns
        -------
        torch.Tensor
            float32 (N, C, H, W), with N = 1 for a single image.
        """
        channels = self.channels
        what = "RGB" if channels == 3 else "grey levels"
        if isinstance(image, np.ndarray):
            if image.ndim == 2 and channels == 1:
                image = image[:, :, None]
            if image.ndim != 3 or image.shape[2] != channels:
                raise InvalidInputError(
                    f"numpy images must be (H, W, {channels}) {what}"
                    f"{' or (H, W)' if channels == 1 else ''}; got shape {image.shape}"
                )
            tensor = torch.tensor(image).permute(2, 0, 1)
        elif isinstance(image, torch.Tensor):
            tensor = image
        else:
            raise UnsupportedError(
                f"image must be a numpy array or a torch tensor; got {type(image).__name__}"
            )
        if tensor.ndim == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 4 or tensor.shape[1] != channels:
            raise InvalidInputError(
                f"tensors must be ({channels}, H, W) or (N, {channels}, H, W) {what}; got shape "
                f"{tuple(tensor.shape)}"
            )
        if tensor.dtype == torch.uint8:
            tensor = tensor.float() / 255.0
        elif tensor.is_floating_point():
            tensor = tensor.float()
            low, high = float(tensor.min()), float(tensor.max())
            if low < 0 or high > 1:
                raise InvalidInputError(
                    f"float images must lie in [0, 1], got [{low:g}, {high:g}]; "
                    "divide 0..255 values by 255"
                )
        else:
            raise InvalidInputError(
                f"image dtype {tensor.dtype} is not supported; use uint8 or float"
            )
        mean, std = self._channel_tensors(tensor)
        return (tensor - mean) / std

    def denormalize(self, tensor: torch.Tensor) -> np.ndarray:
        """Undo :meth:`normalize` for display.

        Parameters
        ----------
        tensor : torch.Tensor
            (C, H, W) or (1, C, H, W) normalized image.

        Returns
        -------
        numpy.ndarray
            uint8 (H, W, 3); the grey levels of a 1-channel image in each of R, G and B.
        """
        values = tensor.detach().cpu().float()
        if values.ndim == 3:
            values = values.unsqueeze(0)
        if values.ndim != 4 or values.shape[:2] != (1, self.channels):
            raise InvalidInputError(
                f"denormalize takes one image, ({self.channels}, H, W) or "
                f"(1, {self.channels}, H, W); got shape {tuple(tensor.shape)}; index the batch "
                "first"
            )
        mean, std = self._channel_tensors(values)
        unit = (values * std + mean).clamp(0.0, 1.0)
        pixels = (unit * 255.0).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        return _as_rgb_array(pixels)


def _as_rgb_array(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): grey levels ((H, W) or (H, W, 1)) repeated in R, G and B; RGB as it is."""
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    grey = pixels.reshape(pixels.shape[:2])
    return np.repeat(grey[:, :, None], 3, axis=2)


IMAGENET_PRESET = ImagePreset(
    resize_shorter=256,
    crop=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
)
"""torchvision's standard ImageNet evaluation transform (Resize(256), CenterCrop(224))."""
