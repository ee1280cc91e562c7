"""What opening a model takes (:class:`LoadOptions`) and gives (:class:`LoadedModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salience.errors import InvalidInputError
from salience.images import ImagePreset
from salience.models.presets import PresetOverrides
from salience.outputs import SOFTMAX, Summary, summarize


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to explain: its adapter, name, input preprocessing and class names (one
    per output), how its outputs read (:mod:`salience.outputs`) and, for a binary output, the
    name of its negative side."""

    adapter: Any = field(repr=False)
    name: str
    preset: ImagePreset
    class_names: list[str] = field(repr=False)
    output_kind: str = SOFTMAX
    negative_class: str | None = None

    def summary(self, outputs: Any, k: int = 5) -> Summary:
        """The prediction of one sample's outputs in their own terms
        (:func:`salience.outputs.summarize`)."""
        return summarize(
            outputs, self.output_kind, self.class_names, k, negative=self.negative_class
        )


@dataclass(frozen=True)
class LoadOptions:
    """How to open a model file and what to override of what it says about its input.

    Attributes
    ----------
    input_name : str, optional
        The image input of an ONNX model with several inputs.
    layout : {"nchw", "nhwc"}, optional
        The input's layout (ONNX and Keras models).
    size : int, optional
        Resize the shorter side to ``size`` and centre-crop ``size``×``size``.
    resize : {"shorter", "squash"}, optional
        Resize the shorter side and centre-crop, or stretch the image to the input size.
    interpolation : str, optional
        The resampling filter (``salience.images.INTERPOLATIONS``).
    channels : {1, 3}, optional
        The channels the model takes (default: read from the model).
    intensity_window : (float, float), optional
        An intensity window (low, high) of single-channel images, in their sample values.
    mean, std : sequence of 3 floats, optional
        Normalization per channel, on pixel values in [0, 1], in the model's channel order
        (1 value for a grayscale model, or for every channel).
    scale : float, optional
        The model takes pixel values (0..255) times ``scale``: ``std = 1 / (255·scale)``.
    channel_order : {"rgb", "bgr"}, optional
        The model's channel order.
    classes : path, optional
        A labels file: one class name per line.
    preset : path, optional
        A preset sidecar (TOML or JSON) to use instead of the one found beside the model file.
    factory : str, optional
        ``package.module:function`` building the architecture of a state dict file.
    weights : path, optional
        Weights for a model given as a factory.
    output_kind : {"softmax", "sigmoid", "multilabel", "regression"}, optional
        How the model's outputs read (default: from its final activation).
    output_key : str, optional
        The output to explain of a model that returns several (a dict key, a field, an index).
    trust_pickle : bool
        Run what the file carries: unpickle full models, load Keras Lambda layers, exported
        programs outside the checked subset and TorchScript code that reaches files (see
        ``docs/security.md``).
    device : str, optional
        Where a PyTorch model runs: ``cpu``, ``cuda`` (``cuda:N``) or ``mps``; default where it
        was opened (the CPU). It applies to every model, bundled ones too.
    """

    input_name: str | None = None
    layout: str | None = None
    size: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    classes: str | None = None
    scale: float | None = None
    channel_order: str | None = None
    preset: str | None = None
    factory: str | None = None
    weights: str | None = None
    output_kind: str | None = None
    output_key: str | None = None
    trust_pickle: bool = False
    resize: str | None = None
    interpolation: str | None = None
    channels: int | None = None
    intensity_window: Sequence[float] | None = None
    device: str | None = None

    def given(self) -> list[str]:
        """The names of the options that were set that describe a model file (all but
        ``device``, which any model takes)."""
        return [
            name
            for name, value in vars(self).items()
            if value is not None and value is not False and name != "device"
        ]

    def overrides(self) -> PresetOverrides:
        """The input settings given here, as preset overrides."""
        if self.size is not None and self.size < 1:
            raise InvalidInputError(f"size must be a positive int, got {self.size}")
        return PresetOverrides(
            size=self.size,
            mean=None if self.mean is None else tuple(float(v) for v in self.mean),
            std=None if self.std is None else tuple(float(v) for v in self.std),
            scale=self.scale,
            channel_order=self.channel_order,
            layout=self.layout,
            labels=None if self.classes is None else Path(self.classes),
            resize=self.resize,
            interpolation=self.interpolation,
            channels=self.channels,
            intensity_window=None
            if self.intensity_window is None
            else tuple(float(v) for v in self.intensity_window),  # type: ignore[arg-type]
            output_kind=self.output_kind,
        )


__all__ = ["LoadOptions", "LoadedModel"]
