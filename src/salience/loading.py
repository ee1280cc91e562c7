"""Open a model named by the user: a bundled model or an ONNX file, with its preprocessing.

The command line, the server and the batch runner name models by a string; this module turns
that string into an adapter, a display name, an input preset and the class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salience.images import ImagePreset


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to explain: its adapter, name, input preprocessing and class names."""

    adapter: Any = field(repr=False)
    name: str
    preset: ImagePreset
    class_names: list[str] = field(repr=False)


@dataclass(frozen=True)
class LoadOptions:
    """Overrides of what a model file says about its input (all optional).

    Attributes
    ----------
    input_name : str, optional
        The image input of an ONNX model with several inputs.
    layout : {"nchw", "nhwc"}, optional
        The input's layout.
    size : int, optional
        Resize the shorter side to ``size`` and centre-crop ``size``×``size``.
    mean, std : sequence of 3 floats, optional
        Normalization per channel.
    classes : path, optional
        A text file with one class name per line.
    """

    input_name: str | None = None
    layout: str | None = None
    size: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    classes: str | None = None

    def given(self) -> list[str]:
        """The names of the options that were set."""
        return [name for name, value in vars(self).items() if value is not None]


def is_onnx(model: str) -> bool:
    """Whether ``model`` names an ONNX file rather than a bundled model."""
    from salience.registry import available
    from salience.zoo import MODEL

    if model.lower().endswith(".onnx"):
        return True
    return Path(model).is_file() and model.strip().lower() not in available(MODEL)


def open_model(model: str, options: LoadOptions | None = None, *, fuse: bool = True) -> LoadedModel:
    """Open the model named by ``model``: a bundled model name or an ``.onnx`` file.

    Parameters
    ----------
    model : str
        ``efficientnet_lite0`` (``salience models`` lists them) or a path to an ONNX file.
    options : LoadOptions, optional
        Overrides of the input description; ONNX files only.
    fuse : bool
        Run long perturbation passes of traceable bundled models on a fused copy.
    """
    options = options or LoadOptions()
    if is_onnx(model):
        return _open_onnx(model, options)
    if given := options.given():
        flags = ", ".join(given)
        raise ValueError(f"{flags} apply to .onnx models only, not to {model}")
    from salience.adapters.torch import TorchAdapter
    from salience.zoo import load_model, model_spec

    spec = model_spec(model)
    adapter = TorchAdapter(load_model(spec.name), fuse=fuse)
    return LoadedModel(adapter, spec.name, spec.preset, list(spec.class_names()))


def _open_onnx(path: str, options: LoadOptions) -> LoadedModel:
    import torch

    from salience.adapters.onnx import OnnxAdapter

    adapter = OnnxAdapter(path, input_name=options.input_name, layout=options.layout)
    if options.size is not None and options.size < 1:
        raise ValueError(f"size must be a positive int, got {options.size}")
    preset = adapter.preset(size=options.size, mean=options.mean, std=options.std)
    count = adapter.num_outputs
    if count is None:  # a dynamic output size: run the model once to see it
        count = int(adapter.forward(torch.zeros(1, 3, *preset.crop)).shape[-1])
    if options.classes is not None:
        text = Path(options.classes).read_text(encoding="utf-8")
        names = [line.strip() for line in text.splitlines() if line.strip()]
        source = options.classes
    else:
        names = list(adapter.class_names() or [f"class {i}" for i in range(count)])
        source = f"the metadata of {adapter.name}"
    if len(names) != count:
        raise ValueError(
            f"{source} names {len(names)} classes but {adapter.name} has {count} outputs"
        )
    return LoadedModel(adapter, adapter.name, preset, names)
