"""ONNX files (``.onnx``), run by onnxruntime as black boxes, and what their metadata says.

The metadata (the model's ``custom_metadata_map``) may describe the input's preprocessing
(:func:`onnx_preset`) and name the classes (:func:`onnx_class_names`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from salience.errors import InvalidInputError
from salience.images import CHANNEL_COUNTS, IMAGENET_PRESET, RESIZE_MODES, ImagePreset
from salience.models.channels import nchw_channels
from salience.models.formats import FileHead, ModelFormat, Opened, register_format
from salience.models.presets import parse_class_names

if TYPE_CHECKING:
    from salience.adapters.onnx import OnnxAdapter
    from salience.models.options import LoadOptions
    from salience.models.presets import PresetOverrides

KIND = "onnx"


def open_onnx(
    path: str, options: LoadOptions, settings: PresetOverrides, *, fuse: bool = True
) -> Opened:
    """An :class:`~salience.adapters.onnx.OnnxAdapter`, with the preset and class names of its
    metadata."""
    from salience.adapters.onnx import OnnxAdapter

    adapter = OnnxAdapter(path, input_name=options.input_name, layout=settings.layout)
    return Opened(adapter, adapter.name, onnx_preset(adapter), onnx_class_names(adapter))


def onnx_preset(
    adapter: OnnxAdapter,
    *,
    size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImagePreset:
    """The preprocessing of an ONNX model's images, from its metadata, with fallbacks.

    Metadata keys (``custom_metadata_map``): ``mean`` and ``std`` (3 comma-separated numbers,
    on RGB values in [0, 1], or 1 for a grayscale model or for every channel), ``size`` or
    ``crop`` (the centre crop, ``N`` or ``H,W``), ``resize`` (the shorter side before
    cropping, or ``squash``: stretch to the size) and ``interpolation``. The channels are the
    input's static channel dimension (1 or 3; RGB otherwise).

    Fallbacks: the crop is the input's static height and width, and the image's shorter side
    is resized to it (no margin); with neither metadata nor a static size, ImageNet's
    resize 256 / crop 224. ``mean`` and ``std`` default to ImageNet's
    ``(0.485, 0.456, 0.406)`` and ``(0.229, 0.224, 0.225)`` — check that they are the
    model's. Arguments override the metadata: ``size`` sets both the resize and the crop.
    """
    meta = adapter.metadata
    crop: int | tuple[int, int] | None
    resize: int | None
    mode = "shorter"
    if size is not None:
        crop, resize = size, size
    else:
        key = "size" if "size" in meta else "crop" if "crop" in meta else None
        static = adapter.image_size()
        if key is not None:
            crop = _size(key, meta[key])
        elif static is not None:
            crop = static[0] if static[0] == static[1] else static
        else:
            crop = None
        if meta.get("resize", "").strip().lower() in RESIZE_MODES:
            mode, resize = meta["resize"].strip().lower(), None
        elif "resize" in meta:
            resize_value = _size("resize", meta["resize"])
            if not isinstance(resize_value, int):
                raise InvalidInputError(
                    f"ONNX metadata 'resize' must be one int; got {meta['resize']!r}"
                )
            resize = resize_value
        elif crop is not None:
            resize = crop if isinstance(crop, int) else max(crop)
        else:
            crop, resize = IMAGENET_PRESET.crop, IMAGENET_PRESET.resize_shorter
        if mode == "squash" and crop is None:
            crop = IMAGENET_PRESET.crop
    channels = nchw_channels(adapter.expected_shape()) if adapter.layout is not None else None
    channels = channels if channels in CHANNEL_COUNTS else 3
    return ImagePreset(
        resize_shorter=resize,
        crop=crop,
        mean=_channels(meta, "mean", mean, channels),
        std=_channels(meta, "std", std, channels),
        interpolation=meta.get("interpolation", "bilinear").strip().lower(),
        resize_mode=mode,
        channels=channels,
    )


def onnx_class_names(adapter: OnnxAdapter) -> tuple[str, ...] | None:
    """Class names from the metadata key ``class_names`` (or ``labels``), if any."""
    meta = adapter.metadata
    for key in ("class_names", "labels"):
        if meta.get(key, "").strip():
            return parse_class_names(meta[key])
    return None


def _floats(key: str, text: str) -> tuple[float, ...]:
    parts = [p for p in re.split(r"[\s,;]+", text.strip().strip("[]()")) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 3):
        raise InvalidInputError(
            f"ONNX metadata {key!r} must be 3 comma-separated numbers (or 1); got {text!r}"
        )
    return values


def _size(key: str, text: str) -> int | tuple[int, int]:
    parts = [p for p in re.split(r"[\s,x×]+", text.strip().strip("[]()")) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise InvalidInputError(
            f"ONNX metadata {key!r} must be a positive int (or H,W); got {text!r}"
        )
    return values[0] if len(values) == 1 else (values[0], values[1])


def _channels(
    meta: Mapping[str, str], key: str, given: Sequence[float] | None, channels: int
) -> tuple[float, ...]:
    """``mean`` or ``std``: as given, else from the metadata, else ImageNet's (for
    ``channels``); the preset checks the count."""
    if given is not None:
        return tuple(float(v) for v in given)
    if meta.get(key, "").strip():
        return _floats(key, meta[key])
    return getattr(IMAGENET_PRESET.with_channels(channels), key)


def _recognises(head: FileHead) -> bool:
    """Any file that is not a zip archive: an ONNX protobuf has no signature to look for."""
    return head.names is None


register_format(
    ModelFormat(
        kind=KIND,
        open=open_onnx,
        suffixes=(".onnx",),
        recognises=_recognises,
        options=frozenset({"input_name"}),
        rank=2,  # asked last: it takes any file the others do not
        file_suffixes=(".onnx",),
    )
)

__all__ = ["onnx_class_names", "onnx_preset", "open_onnx"]
