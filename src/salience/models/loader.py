"""Open a model by name or file: find its format, read its sidecar, call the format's opener."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from salience.errors import InvalidInputError
from salience.images import ImagePreset
from salience.models.formats import model_format
from salience.models.onnx import KIND as ONNX
from salience.models.options import LoadedModel, LoadOptions
from salience.models.presets import PresetOverrides, find_sidecar, read_labels, read_sidecar
from salience.models.safety import check_unpacked_size
from salience.outputs import SIGMOID, check_fits, detect_output_kind

ONLY_FOR = {
    "weights": "weights go with a factory (package.module:function), not with the",
    "input_name": "an input name (--input-name) is for ONNX models, not the",
}
"""How an option that only some formats take is refused by the others."""


def model_kind(model: str, options: LoadOptions | None = None) -> str:
    """What ``model`` names: the kind of its format (``bundled``, ``factory``, ``onnx``,
    ``keras``, ``torchscript``, ``export``, ``torch file`` (a state dict or a pickled model), or
    a format registered since).

    Raises
    ------
    FileNotFoundError
        For a path that does not exist and names nothing else.
    """
    return model_format(model, options or LoadOptions()).kind


def is_onnx(model: str) -> bool:
    """Whether ``model`` names an ONNX file rather than another kind of model."""
    try:
        return model_kind(model) == ONNX
    except OSError:
        return model.lower().endswith(".onnx")


def open_model(
    model: str,
    options: LoadOptions | None = None,
    *,
    fuse: bool = True,
    sample: Callable[[Any], Any] | None = None,
) -> LoadedModel:
    """Open the model named by ``model``, with its preprocessing and class names.

    Parameters
    ----------
    model : str
        A bundled model name, ``package.module:function``, or a model file (see
        :mod:`salience.models` for the formats).
    options : LoadOptions, optional
        How to open it, and overrides of its preset sidecar and metadata.
    fuse : bool
        Run long perturbation passes of PyTorch models on a safely captured program where one
        can be built (``salience.adapters.fused``).
    sample : callable, optional
        ``sample(adapter)`` gives the input the opened model is probed with once (to count its
        outputs), e.g. a row of features for a tabular model; default a blank image of the
        preset's size.
    """
    options = options or LoadOptions()
    found = model_format(model, options)
    if found.described:
        if given := options.given():
            raise InvalidInputError(
                f"{', '.join(given)} apply to model files and factories, not to the {found.kind} "
                f"model {model} (its preprocessing is known)"
            )
        opened = found.open(model, options, PresetOverrides(), fuse=fuse)
        adapter = on_device(opened.adapter, options.device, found.kind)
        return LoadedModel(adapter, opened.name, opened.preset, list(opened.class_names))
    for option, refusal in ONLY_FOR.items():
        if getattr(options, option) is not None and option not in found.options:
            raise InvalidInputError(f"{refusal} {found.kind} {model}")
    model_file = found.model_file(model, options)
    if model_file and Path(model_file).is_file():
        check_unpacked_size(model_file)
    settings = options.overrides().over(_sidecar(options, model_file))
    adapter, name, base, metadata_names = found.open(model, options, settings, fuse=fuse)
    adapter = on_device(adapter, options.device, found.kind)
    if options.output_key is not None:
        if not hasattr(adapter, "with_output"):
            raise InvalidInputError(
                f"an output key (--output-key) is for PyTorch, Keras and ONNX models, not the "
                f"{found.kind} model {model}, which gives its first output"
            )
        adapter = adapter.with_output(options.output_key)
    preset = settings.apply(base) if settings.given() else base
    probe = probe_input(adapter, preset, sample)
    count = _output_count(adapter, name, probe)
    names = _class_names(count, name, settings, metadata_names)
    loaded = LoadedModel(adapter, name, preset, names)
    return _with_output_kind(loaded, settings.output_kind, probe, count)


def on_device(adapter: Any, device: str | None, kind: str) -> Any:
    """``adapter`` with the model salience opened moved to ``device`` (None: left where it is).

    This is the one place a model changes device: the inputs follow it, since every adapter
    prepares them on its model's device, and the maps come back on the CPU.

    Raises
    ------
    InvalidInputError
        For a device this machine lacks (:func:`~salience.adapters.torch.check_device`), or
        one other than the CPU for a model that is not a PyTorch module.
    """
    if device is None:
        return adapter
    from salience.adapters.torch import TorchAdapter, check_device

    wanted = check_device(device)
    if getattr(adapter, "device", None) == wanted:
        return adapter
    if wanted.type == "cpu" and not isinstance(adapter, TorchAdapter):
        return adapter  # ONNX Runtime, TensorFlow: they run on the CPU here
    if type(adapter) is not TorchAdapter:
        raise InvalidInputError(
            f"--device {device} moves PyTorch modules (bundled models, factories, state dicts); "
            f"this {kind} model runs where it is opened: use --device cpu"
        )
    adapter.model.to(wanted)
    return adapter


def _with_output_kind(
    loaded: LoadedModel, given: str | None, probe: Any, outputs: int
) -> LoadedModel:
    """``loaded`` (a model of ``outputs`` outputs) with its output kind: ``given``, else read
    from the final activation its adapter cuts; a binary output named by two classes keeps the
    first as its negative side.

    Raises
    ------
    OutputKindError
        When the kind does not fit the model's number of outputs.
    """
    from dataclasses import replace

    names = loaded.class_names
    final = getattr(loaded.adapter, "final_activation", None)
    detect = given is None and callable(final)
    activation = final(probe) if detect else None
    two_sided = len(names) == 2 and outputs == 1
    count = 1 if two_sided else len(names)
    kind = check_fits(given or detect_output_kind(activation, count), count)
    if two_sided and kind != SIGMOID:
        raise InvalidInputError(
            f"two class names for the one output of {loaded.name} name the sides of a binary "
            'decision: give output_kind = "sigmoid" (--output-kind sigmoid), or one name'
        )
    if two_sided:
        return replace(loaded, class_names=[names[1]], output_kind=kind, negative_class=names[0])
    return replace(loaded, output_kind=kind)


def _output_count(adapter: Any, name: str, probe: Any) -> int:
    """The model's number of outputs, from one forward pass of the ``probe`` input
    (:func:`probe_input`), which also checks that the preset fits the model."""
    try:
        outputs = adapter.forward(probe)
    except RuntimeError as error:
        if refusal := _channels_refused(error, name):
            raise InvalidInputError(refusal) from error
        raise
    return int(outputs.shape[-1]) if outputs.ndim >= 2 else 1


def probe_input(
    adapter: Any, preset: ImagePreset, sample: Callable[[Any], Any] | None = None
) -> Any:
    """What the model is probed with: ``sample(adapter)`` when given, a blank volume or signal
    of the shape the model declares or its first convolution (``Conv3d``, ``Conv1d``) implies
    (a free axis :data:`FREE_SIZE` long), else a blank image of the preset's size and channels,
    normalized."""
    import torch

    if sample is not None:
        return sample(adapter)
    declared = declared_input_shape(adapter)
    if declared is None:
        declared = first_convolution_input(getattr(adapter, "model", None))
    if declared is not None and len(declared) != 4:  # a volume, a signal
        return torch.zeros(1, *(FREE_SIZE if size is None else size for size in declared[1:]))
    crop = preset.crop if preset.crop is not None else (224, 224)
    height, width = (crop, crop) if isinstance(crop, int) else crop
    return preset.normalize(torch.zeros(1, preset.channels, height, width))


FREE_SIZE = 32
"""The length a probe gives a spatial axis the model leaves free."""


def first_convolution_input(model: Any) -> tuple[int | None, ...] | None:
    """``(None, C, None, …)`` for a module whose first convolution is a ``Conv1d`` or ``Conv3d``
    taking ``C`` channels; None otherwise (no module, no convolution, or a 2-D one)."""
    from torch import nn

    if not isinstance(model, nn.Module):
        return None
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first is None or len(first.kernel_size) == 2:
        return None
    return (None, first.in_channels, *(None,) * len(first.kernel_size))


def _sidecar(options: LoadOptions, model_file: str | None) -> PresetOverrides:
    if options.preset is not None:
        return read_sidecar(options.preset)
    found = find_sidecar(model_file) if model_file and Path(model_file).is_file() else None
    return read_sidecar(found) if found is not None else PresetOverrides()


def declared_input_shape(adapter: Any) -> tuple[int | None, ...] | None:
    """The input shape a model declares, None for free dimensions (an exported program, an
    ONNX file); None when it declares none (a module takes what its layers take)."""
    shape = getattr(getattr(adapter, "model", None), "input_shape", None)
    if shape is None and callable(getattr(adapter, "expected_shape", None)):
        shape = adapter.expected_shape()
    return None if shape is None else tuple(shape)


def takes_signals(adapter: Any) -> bool:
    """Whether a model declares ``(N, C, L)`` signal inputs."""
    shape = declared_input_shape(adapter)
    return shape is not None and len(shape) == 3


def input_width(adapter: Any) -> int | None:
    """The number of features a model takes, where its input says it: an ONNX input ``(N, F)``,
    or a first layer with weights that is a linear layer (``in_features``); else None."""
    shape = getattr(adapter, "input_shape", None)
    if isinstance(shape, list | tuple) and len(shape) == 2 and isinstance(shape[1], int):
        return int(shape[1])
    model = getattr(adapter, "model", None)
    modules = getattr(model, "modules", None)
    if modules is None:
        return None
    for module in modules():
        width = getattr(module, "in_features", None)
        if isinstance(width, int):
            return width
        if next(module.parameters(recurse=False), None) is not None:
            return None
    return None


def _class_names(
    count: int,
    name: str,
    settings: PresetOverrides,
    metadata_names: Sequence[str] | None,
) -> list[str]:
    """Names of the ``count`` outputs of the model ``name``: from the labels setting, else the
    model's metadata, else ``class i``."""
    labels = settings.labels
    if isinstance(labels, Path):
        names, source = list(read_labels(labels)), str(labels)
    elif labels is not None:
        names, source = list(labels), "the preset's labels"
    elif metadata_names:
        names, source = list(metadata_names), f"the metadata of {name}"
    else:
        return [f"class {i}" for i in range(count)]
    if len(names) != count and not (count == 1 and len(names) == 2):  # 2: a binary's sides
        raise InvalidInputError(
            f"{source} names {len(names)} classes but {name} has {count} outputs"
        )
    return names


_TORCH_CHANNELS = re.compile(
    r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels instead"
)


def _channels_refused(error: RuntimeError, name: str) -> str | None:
    """One line for a PyTorch convolution's refusal of the prepared channels, with the fix."""
    match = _TORCH_CHANNELS.search(str(error))
    if match is None:
        return None
    wanted = match.group(1)
    return (
        f"{name} refused the prepared images ({match.group(0)}); prepare {wanted}-channel "
        f"images: --channels {wanted} (channels = {wanted} in its preset)"
    )


__all__ = ["declared_input_shape", "is_onnx", "model_kind", "on_device", "open_model"]
