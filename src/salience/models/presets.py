"""Preprocessing that travels with a model file: preset sidecars and their overrides.

A model file ``net.keras`` (``net.pt``, ``net.onnx``, ...) may have a sidecar ``net.preset.toml``
or ``net.preset.json`` beside it that says how its images are prepared::

    size = 224                      # the model's input: centre crop, N or [H, W]
    resize = 256                    # shorter side before cropping (default: size), or
                                    # "squash" (stretch to size) or "shorter" (to size)
    interpolation = "bilinear"      # bicubic | bilinear | nearest | lanczos | box | hamming
    channels = 3                    # 1 (grayscale) or 3 (default: from the model)
    intensity_window = [0, 4095]    # of single-channel images, in their values, before mean/std
    mean = [0.485, 0.456, 0.406]    # on pixel values in [0, 1], in the model's channel order
    std = [0.229, 0.224, 0.225]     # (one value per channel, or one for all); or:
                                    # scale = 0.0039215686 (the model takes pixel × scale)
    channel_order = "rgb"           # or "bgr" (Caffe-style models)
    layout = "nhwc"                 # the input layout, when the model's shape does not tell
    labels = "labels.txt"           # one class name per line (or a JSON list), or a list here
    output_kind = "sigmoid"         # softmax | sigmoid | multilabel | regression (see outputs)

Everything is optional. What the sidecar leaves out comes from the model (its static input size,
its channels, ONNX metadata), else ImageNet's preprocessing; command-line flags override the
sidecar.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salience.errors import InvalidInputError
from salience.images import (
    CHANNEL_COUNTS,
    IMAGENET_PRESET,
    INTERPOLATIONS,
    RESIZE_MODES,
    ImagePreset,
)
from salience.outputs import OUTPUT_KINDS

CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
SIDECAR_SUFFIXES = (".preset.toml", ".preset.json")


@dataclass(frozen=True)
class ModelPreset(ImagePreset):
    """An :class:`~salience.images.ImagePreset` that can also hand the model BGR channels.

    ``mean`` and ``std`` are in RGB order, as for every preset; with ``channel_order="bgr"`` the
    normalized tensor's channels are reversed for the model, and reversed back for display.
    """

    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channel_order not in CHANNEL_ORDERS:
            raise InvalidInputError(
                f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}; "
                f"got {self.channel_order!r}"
            )

    def normalize(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """:meth:`ImagePreset.normalize`, with the channels in the model's order."""
        tensor = super().normalize(image)
        return tensor.flip(1) if self.channel_order == "bgr" else tensor

    def denormalize(self, tensor: torch.Tensor) -> np.ndarray:
        """:meth:`ImagePreset.denormalize` of a tensor in the model's channel order."""
        if self.channel_order == "bgr":
            tensor = tensor.flip(-3)
        return super().denormalize(tensor)


@dataclass(frozen=True)
class PresetOverrides:
    """What a sidecar or the command line says about a model's input; None leaves it be.

    ``mean`` and ``std`` are in the model's channel order; ``labels`` is a list of names or
    the path of a labels file; ``resize`` is the shorter side, or a resize mode
    (:data:`~salience.images.RESIZE_MODES`).
    """

    size: int | tuple[int, int] | None = None
    resize: int | str | None = None
    interpolation: str | None = None
    channels: int | None = None
    intensity_window: tuple[float, float] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    channel_order: str | None = None
    layout: str | None = None
    labels: tuple[str, ...] | Path | None = None
    output_kind: str | None = None

    def given(self) -> list[str]:
        """The names of the settings that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def over(self, base: PresetOverrides) -> PresetOverrides:
        """These settings, with ``base``'s where these leave one unset.

        A size given here also sets the resize (``--size N``: resize to N, crop N×N; a resize
        mode there is kept), and a scale here replaces a std there (and the other way round).
        """
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in merged.items():
            if value is None:
                merged[key] = getattr(base, key)
        if self.size is not None and self.resize is None:
            merged["resize"] = base.resize if isinstance(base.resize, str) else None
        if self.scale is not None and self.std is None:
            merged["std"] = None
        if self.std is not None and self.scale is None:
            merged["scale"] = None
        return PresetOverrides(**merged)

    def apply(self, base: ImagePreset) -> ModelPreset:
        """``base`` (the model's own or ImageNet's preprocessing) with these settings applied."""
        if self.std is not None and self.scale is not None:
            raise InvalidInputError("give std or scale, not both (scale s means std = 1 / (255·s))")
        order = self.channel_order or getattr(base, "channel_order", "rgb")
        base = base.with_channels(self.channels or base.channels)
        crop = base.crop if self.size is None else self.size
        mode = self.resize if isinstance(self.resize, str) else base.resize_mode
        resize = None if isinstance(self.resize, str) else self.resize
        if self.resize is not None and not isinstance(self.resize, str):
            mode = "shorter"
        if resize is None:
            resize = base.resize_shorter if self.size is None else _longest(self.size)
        if self.scale is not None:
            std: Sequence[float] = (1.0 / (255.0 * self.scale),)
            mean: Sequence[float] = self.mean or (0.0,)
        else:
            std = self.std or base.std
            mean = self.mean or base.mean
        if order == "bgr":  # given in the model's order, kept in RGB order
            mean = tuple(reversed(mean)) if self.mean else mean
            std = tuple(reversed(std)) if self.std else std
        return ModelPreset(
            resize_shorter=resize,
            crop=crop,
            mean=tuple(mean),
            std=tuple(std),
            interpolation=self.interpolation or base.interpolation,
            resize_mode=mode,
            channels=base.channels,
            intensity_window=self.intensity_window or base.intensity_window,
            channel_order=order,
        )


def _longest(size: int | tuple[int, int]) -> int:
    return size if isinstance(size, int) else max(size)


def fallback_preset(input_size: tuple[int, int] | None, channels: int | None = None) -> ImagePreset:
    """ImageNet's normalization, at the model's static input size and channels when known.

    With a static size the image's shorter side is resized to it and the centre cropped (no
    margin); without one, ImageNet's resize 256 / crop 224. A 1-channel model gets the mean
    of ImageNet's means and of its stds (0.449, 0.226); a channel count other than 1 or 3 is
    left to the model to refuse (RGB is prepared).
    """
    preset = IMAGENET_PRESET
    if channels in CHANNEL_COUNTS:
        preset = preset.with_channels(channels)
    if input_size is None:
        return preset
    height, width = input_size
    crop: int | tuple[int, int] = height if height == width else (height, width)
    return replace(preset, crop=crop, resize_shorter=max(height, width))


def find_sidecar(model_path: str | Path) -> Path | None:
    """The preset sidecar beside ``model_path`` (``net.keras`` → ``net.preset.toml``/``.json``).

    Raises
    ------
    ValueError
        When both a TOML and a JSON sidecar exist.
    """
    path = Path(model_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    found = [path.with_name(stem + suffix) for suffix in SIDECAR_SUFFIXES]
    found = [candidate for candidate in found if candidate.is_file()]
    if len(found) > 1:
        raise InvalidInputError(
            f"{found[0].name} and {found[1].name} both describe {path.name}; remove one of them"
        )
    return found[0] if found else None


def read_sidecar(path: str | Path) -> PresetOverrides:
    """Read a preset sidecar (``.toml`` or ``.json``; see the module docs for its keys)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise OSError(f"cannot read the preset {path}: {error.strerror or error}") from error
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise InvalidInputError(f"the preset {path.name} is not valid {kind}: {error}") from error
    if not isinstance(data, dict):
        raise InvalidInputError(f"the preset {path.name} must be a table of settings, not a list")
    return overrides_from_mapping(data, source=path.name, folder=path.parent)


_KEYS = frozenset(f.name for f in fields(PresetOverrides))


def overrides_from_mapping(
    data: Mapping[str, Any], *, source: str, folder: Path | None = None
) -> PresetOverrides:
    """Check and convert the settings of a sidecar; ``folder`` anchors a relative labels path."""
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise InvalidInputError(
            f"{source} has unknown settings {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    values: dict[str, Any] = {}
    for key, value in data.items():
        values[key] = _CHECKS[key](key, value, source)
    labels = values.get("labels")
    if isinstance(labels, Path) and folder is not None and not labels.is_absolute():
        values["labels"] = folder / labels
    return PresetOverrides(**values)


def _positive_int(key: str, value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def _size(key: str, value: Any, source: str) -> int | tuple[int, int]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return (_positive_int(key, value[0], source), _positive_int(key, value[1], source))
    return _positive_int(key, value, source)


def _numbers(key: str, value: Any, source: str, counts: tuple[int, ...], what: str) -> Any:
    ok = isinstance(value, list | tuple) and len(value) in counts
    if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise InvalidInputError(f"{source}: {key} must be a list of {what}, got {value!r}")
    return tuple(float(v) for v in value)


def _triple(key: str, value: Any, source: str) -> tuple[float, ...]:
    """One number per channel (3, or 1 for a grayscale model or for every channel)."""
    return _numbers(key, value, source, (1, 3), "3 numbers (or 1)")


def _resize(key: str, value: Any, source: str) -> int | str:
    if isinstance(value, str):
        return _choice(RESIZE_MODES)(key, value, source)
    return _positive_int(key, value, source)


def _channels(key: str, value: Any, source: str) -> int:
    if value not in CHANNEL_COUNTS or isinstance(value, bool):
        raise InvalidInputError(f"{source}: {key} must be 1 (grayscale) or 3 (RGB), got {value!r}")
    return int(value)


def _window(key: str, value: Any, source: str) -> tuple[float, float]:
    low, high = _numbers(key, value, source, (2,), "2 numbers [low, high]")
    if not low < high:
        raise InvalidInputError(
            f"{source}: {key} must be [low, high] with low < high, got {value!r}"
        )
    return low, high


def _positive_float(key: str, value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInputError(f"{source}: {key} must be a positive number, got {value!r}")
    return float(value)


def _choice(options: Sequence[str]) -> Any:
    def check(key: str, value: Any, source: str) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            raise InvalidInputError(
                f"{source}: {key} must be one of {', '.join(options)}, got {value!r}"
            )
        return value.lower()

    return check


def _labels(key: str, value: Any, source: str) -> tuple[str, ...] | Path:
    if isinstance(value, str) and value:
        return Path(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidInputError(
        f"{source}: {key} must be a labels file or a list of names, got {value!r}"
    )


_CHECKS = {
    "size": _size,
    "resize": _resize,
    "interpolation": _choice(tuple(INTERPOLATIONS)),
    "channels": _channels,
    "intensity_window": _window,
    "mean": _triple,
    "std": _triple,
    "scale": _positive_float,
    "channel_order": _choice(CHANNEL_ORDERS),
    "layout": _choice(LAYOUTS),
    "labels": _labels,
    "output_kind": _choice(OUTPUT_KINDS),
}


def parse_class_names(text: str) -> tuple[str, ...]:
    """Class names from text: a JSON list or ``{index: name}`` object, else one name per line,
    else comma-separated (a labels file, ONNX metadata)."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list):
            return tuple(str(v) for v in value)
        if isinstance(value, dict):
            try:
                return tuple(str(value[k]) for k in sorted(value, key=int))
            except ValueError:
                pass
    separator = "\n" if "\n" in stripped else ","
    return tuple(part.strip() for part in stripped.split(separator) if part.strip())


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names from a labels file: one per line, or a JSON list / ``{index: name}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise OSError(f"cannot read the labels file {path}: {error.strerror or error}") from error
    names = parse_class_names(text)
    if not names:
        raise InvalidInputError(f"the labels file {path} names no classes; write one name per line")
    return names


__all__ = [
    "CHANNEL_ORDERS",
    "LAYOUTS",
    "SIDECAR_SUFFIXES",
    "ModelPreset",
    "PresetOverrides",
    "fallback_preset",
    "find_sidecar",
    "overrides_from_mapping",
    "parse_class_names",
    "read_labels",
    "read_sidecar",
]
