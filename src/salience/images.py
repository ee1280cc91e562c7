"""Load, validate and preprocess images, and map saliency back onto the original image.

Everything here uses Pillow, numpy, scipy and torch only (no torchvision). The resize and
centre-crop rules follow torchvision's ``Resize(int)`` + ``CenterCrop`` so that presets match
the transforms the models were trained with.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from salience.postprocess import upsample

__all__ = [
    "IMAGENET_PRESET",
    "CropGeometry",
    "ImageLoadError",
    "ImagePreset",
    "PreparedImage",
    "as_2d_map",
    "load_image",
    "resize_map",
]

DEFAULT_MAX_PIXELS = 50_000_000
READABLE_FORMATS = "PNG, JPEG, BMP, TIFF, WebP"
INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_DEPTH_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError)

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An image that cannot be loaded: missing, unreadable, corrupt or too large."""


class _PillowPixelLimitLift:
    """Switch off Pillow's decompression-bomb check while ``load_image``'s own check guards.

    Reference-counted under a lock, so overlapping loads in several threads restore
    ``Image.MAX_IMAGE_PIXELS`` only when the last one finishes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved_limit: int | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved_limit = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            self._users += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                Image.MAX_IMAGE_PIXELS = self._saved_limit


_lift_pillow_pixel_limit = _PillowPixelLimitLift()


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_pixel_count(label: str, height: int, width: int, max_pixels: int) -> None:
    pixels = height * width
    if pixels > max_pixels:
        raise ImageLoadError(
            f"{label} has {pixels:,} pixels, more than the limit of {max_pixels:,}; "
            "downscale it or raise max_pixels"
        )


def _rescale_to_uint8(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Map ``0..full_scale`` linearly onto ``0..255`` with rounding."""
    scaled = np.round(values.astype(np.float64) * (255.0 / full_scale))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Grey levels of a 16-bit, 32-bit integer or float image as uint8.

    ``I;16*`` modes and ``I`` images within 0..65535 are taken as 16-bit samples, ``F`` images
    within [0, 1] as unit-range floats; anything else is min-max stretched.
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = float(values.min()), float(values.max())
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and low >= 0 and high <= 65535):
        return _rescale_to_uint8(values, 65535)
    if image.mode == "F" and low >= 0 and high <= 1:
        return _rescale_to_uint8(values, 1.0)
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _rescale_to_uint8(values - low, high - low)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited over white."""
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_high_depth_to_uint8(image)).convert("RGB")
    try:
        if image.has_transparency_data:
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(
            f"Pillow cannot convert mode {image.mode!r} to RGB ({exc}); convert the image to "
            "RGB, RGBA or L first"
        ) from exc


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
        data = _rescale_to_uint8(array, 65535)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError("float image array contains NaN or infinite values; replace them")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ImageLoadError(
                f"float image values must lie in [0, 1], got [{low:g}, {high:g}]; "
                "divide 0..255 values by 255"
            )
        data = _rescale_to_uint8(array, 1.0)
    else:
        raise ImageLoadError(
            f"image arrays of dtype {array.dtype} are not supported; "
            "use uint8, uint16 or float in [0, 1]"
        )
    return Image.fromarray(np.ascontiguousarray(data))


def _decode(image: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """Size-check from the header, fully decode, apply EXIF orientation, convert to RGB."""
    _check_pixel_count(label, image.height, image.width, max_pixels)
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(
            f"{label} is truncated or corrupt ({exc}); re-export or re-download it"
        ) from exc
    return _to_rgb(ImageOps.exif_transpose(image))


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load an image from a path, bytes, a PIL image or a numpy array, as RGB.

    Parameters
    ----------
    source : str, os.PathLike, bytes, PIL.Image.Image or numpy.ndarray
        A PNG/JPEG/BMP/TIFF/WebP file or its bytes, a PIL image of any mode, or an
        (H, W), (H, W, 3) or (H, W, 4) array of uint8, uint16 or float in [0, 1].
    max_pixels : int
        Largest accepted ``height * width``; checked from the header before decoding.

    Returns
    -------
    PIL.Image.Image
        RGB image with EXIF orientation applied, 16-bit data scaled to 8 bits and
        transparency composited over white.

    Raises
    ------
    ImageLoadError
        If the file is missing, not an image, truncated/corrupt, or too large.
    """
    if not _is_positive_int(max_pixels):
        raise ValueError(f"max_pixels must be a positive int; got {max_pixels!r}")
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixel_count(f"array of shape {source.shape}", *source.shape[:2], max_pixels)
        return _to_rgb(_array_to_pil(source))
    with _lift_pillow_pixel_limit:
        if isinstance(source, Image.Image):
            return _decode(source, "the PIL image", max_pixels)
        if isinstance(source, bytes | bytearray | memoryview):
            label = f"image data ({len(source):,} bytes)"
            stream: Path | io.BytesIO = io.BytesIO(bytes(source))
        elif isinstance(source, str | os.PathLike):
            stream = Path(source)
            label = str(stream)
            if not stream.is_file():
                problem = "is a directory" if stream.is_dir() else "does not exist"
                raise ImageLoadError(f"{label} {problem}; give the path of an image file")
        else:
            raise TypeError(
                "source must be a path, bytes, a PIL image or a numpy array; "
                f"got {type(source).__name__}"
            )
        try:
            opened = Image.open(stream)
        except UnidentifiedImageError:
            raise ImageLoadError(
                f"{label} is not an image Pillow can read ({READABLE_FORMATS})"
            ) from None
        except OSError as exc:
            hint = "check its permissions" if isinstance(stream, Path) else "is it complete?"
            raise ImageLoadError(f"{label} cannot be opened ({exc}); {hint}") from exc
        with opened:
            return _decode(opened, label, max_pixels)


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
        raise ValueError(
            f"{name} must be a non-empty 2-D map (h, w); got shape {values.shape}; "
            "squeeze batch and channel axes first"
        )
    if np.isinf(values).any():
        raise ValueError(f"{name} contains infinite values; clip them or use np.nan_to_num")
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
        raise ValueError(f"size must be a (height, width) pair of positive ints; got {size!r}")
    if values.shape == (height, width):
        return values.copy()
    return upsample(torch.from_numpy(values), (height, width), antialias=True).numpy()


@dataclass(frozen=True)
class CropGeometry:
    """Where the model's input came from in the original image.

    Attributes
    ----------
    original_size : tuple of int
        (height, width) of the loaded image.
    resized_size : tuple of int
        (height, width) after resizing.
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
            raise ValueError(
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
        float32 (1, 3, h, w), normalized.
    display : numpy.ndarray
        uint8 (h, w, 3): the resized and cropped RGB image the model saw.
    original : numpy.ndarray
        uint8 (H0, W0, 3): the loaded image.
    geometry : CropGeometry
        How ``display`` was cut from ``original``.
    """

    tensor: torch.Tensor
    display: np.ndarray
    original: np.ndarray
    geometry: CropGeometry


def _channel_triple(name: str, values: Any) -> tuple[float, float, float]:
    triple = tuple(float(v) for v in values)
    if len(triple) != 3:
        raise ValueError(f"{name} must have 3 values, one per RGB channel; got {len(triple)}")
    return triple  # type: ignore[return-value]


@dataclass(frozen=True)
class ImagePreset:
    """Resize, centre-crop and normalization settings of a model's input.

    Attributes
    ----------
    resize_shorter : int or None
        Resize so the shorter side has this length, keeping the aspect ratio (the longer
        side is truncated to an int, as torchvision does); None keeps the size.
    crop : int, tuple of int or None
        Centre-crop size, ``n`` or ``(height, width)``; None keeps the whole image.
    mean, std : tuple of float
        Per-channel normalization applied to RGB values in [0, 1].
    interpolation : str
        ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
    """

    resize_shorter: int | None
    crop: int | tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize_shorter is not None and not _is_positive_int(self.resize_shorter):
            raise ValueError(
                f"resize_shorter must be a positive int or None; got {self.resize_shorter!r}"
            )
        crop = (self.crop, self.crop) if _is_positive_int(self.crop) else self.crop
        valid_crop = crop is None or (
            isinstance(crop, tuple) and len(crop) == 2 and all(map(_is_positive_int, crop))
        )
        if not valid_crop:
            raise ValueError(
                "crop must be a positive int, a (height, width) pair of positive ints or None; "
                f"got {self.crop!r}"
            )
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "mean", _channel_triple("mean", self.mean))
        std = _channel_triple("std", self.std)
        if min(std) <= 0:
            raise ValueError(f"std values must be positive; got {std}")
        object.__setattr__(self, "std", std)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}; "
                f"got {self.interpolation!r}"
            )

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
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
            raise ValueError(
                f"crop {crop_height}x{crop_width} is larger than the resized image "
                f"{height}x{width}; use a smaller crop or a larger resize_shorter"
            )
        top = round((height - crop_height) / 2)
        left = round((width - crop_width) / 2)
        return top, left, crop_height, crop_width

    def prepare(self, image: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedImage:
        """Load, resize, centre-crop and normalize an image.

        Parameters
        ----------
        image : str, os.PathLike, bytes, PIL.Image.Image or numpy.ndarray
            Anything :func:`load_image` accepts.
        max_pixels : int
            Passed to :func:`load_image`.

        Returns
        -------
        PreparedImage
        """
        rgb = load_image(image, max_pixels=max_pixels)
        original = np.array(rgb)
        resized_height, resized_width = self._resized_size(rgb.height, rgb.width)
        if (resized_height, resized_width) != (rgb.height, rgb.width):
            rgb = rgb.resize(
                (resized_width, resized_height), resample=INTERPOLATIONS[self.interpolation]
            )
        top, left, height, width = box = self._crop_box(resized_height, resized_width)
        display = np.asarray(rgb)[top : top + height, left : left + width].copy()
        geometry = CropGeometry(
            original_size=original.shape[:2],
            resized_size=(resized_height, resized_width),
            crop_box=box,
        )
        return PreparedImage(
            tensor=self.normalize(display), display=display, original=original, geometry=geometry
        )

    def _channel_tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        return mean, std

    def normalize(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Scale RGB values to [0, 1] if uint8, then apply ``(x - mean) / std``.

        Parameters
        ----------
        image : numpy.ndarray or torch.Tensor
            numpy (H, W, 3), or torch (3, H, W) or (N, 3, H, W); uint8 or float in [0, 1].

        Returns
        -------
        torch.Tensor
            float32 (N, 3, H, W), with N = 1 for a single image.
        """
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"numpy images must be (H, W, 3) RGB; got shape {image.shape}")
            tensor = torch.tensor(image).permute(2, 0, 1)
        elif isinstance(image, torch.Tensor):
            tensor = image
        else:
            raise TypeError(
                f"image must be a numpy array or a torch tensor; got {type(image).__name__}"
            )
        if tensor.ndim == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(
                f"tensors must be (3, H, W) or (N, 3, H, W); got shape {tuple(tensor.shape)}"
            )
        if tensor.dtype == torch.uint8:
            tensor = tensor.float() / 255.0
        elif tensor.is_floating_point():
            tensor = tensor.float()
            low, high = float(tensor.min()), float(tensor.max())
            if low < 0 or high > 1:
                raise ValueError(
                    f"float images must lie in [0, 1], got [{low:g}, {high:g}]; "
                    "divide 0..255 values by 255"
                )
        else:
            raise ValueError(f"image dtype {tensor.dtype} is not supported; use uint8 or float")
        mean, std = self._channel_tensors(tensor)
        return (tensor - mean) / std

    def denormalize(self, tensor: torch.Tensor) -> np.ndarray:
        """Undo :meth:`normalize` for display.

        Parameters
        ----------
        tensor : torch.Tensor
            (3, H, W) or (1, 3, H, W) normalized image.

        Returns
        -------
        numpy.ndarray
            uint8 (H, W, 3).
        """
        values = tensor.detach().cpu().float()
        if values.ndim == 3:
            values = values.unsqueeze(0)
        if values.ndim != 4 or values.shape[:2] != (1, 3):
            raise ValueError(
                f"denormalize takes one image, (3, H, W) or (1, 3, H, W); "
                f"got shape {tuple(tensor.shape)}; index the batch first"
            )
        mean, std = self._channel_tensors(values)
        unit = (values * std + mean).clamp(0.0, 1.0)
        return (unit * 255.0).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


IMAGENET_PRESET = ImagePreset(
    resize_shorter=256,
    crop=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
)
"""torchvision's standard ImageNet evaluation transform (Resize(256), CenterCrop(224))."""
