"""ONNX files (``.onnx``), run by onnxruntime as black boxes, and what their metadata says.

The metadata (the model's ``custom_metadata_map``) may describe the input's preprocessing
(:func:`onnx_preset`) and name the classes (:func:`onnx_class_names`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from salience.errors import InvalidInputError
from salience.images import IMAGENET_PRESET, ImagePreset
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
    on RGB values in [0, 1]), ``size`` or ``crop`` (the centre crop, ``N`` or ``H,W``),
    ``resize`` (the shorter side before cropping) and ``interpolation``.

    Fallbacks: the crop is the input's static height and width, and the image's shorter side
    is resized to it (no margin); with neither metadata nor a static size, ImageNet's
    resize 256 / crop 224. ``mean`` and ``std`` default to ImageNet's
    ``(0.485, 0.456, 0.406)`` and ``(0.229, 0.224, 0.225)`` — check that they are the
    model's. Arguments override the metadata: ``size`` sets both the resize and the crop.
    """
    meta = adapter.metadata
    crop: int | tuple[int, int] | None
    resize: int | None
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
        if "resize" in meta:
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
    return ImagePreset(
        resize_shorter=resize,
        crop=crop,
        mean=_channels(meta, "mean", mean),
        std=_channels(meta, "std", std),
        interpolation=meta.get("interpolation", "bilinear").strip().lower(),
    )


def onnx_class_names(adapter: OnnxAdapter) -> tuple[str, ...] | None:
    """Class names from the metadata key ``class_names`` (or ``labels``), if any."""
    meta = adapter.metadata
    for key in ("class_names", "labels"):
        if meta.get(key, "").strip():
            return parse_class_names(meta[key])
    return None


def _floats(key: str, text: str) -> tuple[float, float, float]:
    parts = [p for p in re.split(r"[\s,;]+", text.strip().strip("[]()")) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InvalidInputError(
            f"ONNX metadata {key!r} must be 3 comma-separated numbers; got {text!r}"
        )
    return values  # type: ignore[return-value]


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
    meta: Mapping[str, str], key: str, given: Sequence[float] | None
) -> tuple[float, float, float]:
    """``mean`` or ``std``: as given, else from the metadata, else ImageNet's."""
    if given is not None:
        values = tuple(float(v) for v in given)
        if len(values) != 3:
            raise InvalidInputError(
                f"{key} must have 3 values, one per RGB channel; got {len(values)}"
            )
        return values  # type: ignore[return-value]
    if meta.get(key, "").strip():
        return _floats(key, meta[key])
    return getattr(IMAGENET_PRESET, key)


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
