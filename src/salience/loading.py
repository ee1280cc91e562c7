"""Open a model named by the user, from anywhere, with its preprocessing and class names.

The command line, the server and the batch runner name models by a string; this module turns
that string into an adapter, a display name, an input preset and the class names. A model is:

- a bundled model's name (``efficientnet_lite0``; ``salience models`` lists them);
- a Python factory ``package.module:function`` returning a ``torch.nn.Module`` or a Keras model,
  optionally with a weights file (``.safetensors``, or a ``.pth``/``.pt`` state dict read with
  ``weights_only=True``; Keras weights for a Keras model);
- a TorchScript file (``.pt``, ``torch.jit.save``) or a ``torch.export`` program (``.pt2``);
- a state dict file plus the factory that builds its architecture;
- a Keras 3 file (``.keras``, or a legacy ``.h5`` that Keras 3 reads), run on the torch backend;
- an ONNX file (``.onnx``), a black box.

A pickled full model (``torch.save(model)``) is refused unless the caller trusts it: unpickling
runs whatever code the file carries. No other format runs Python from the file either, and a
file that claims to unpack to far more than its size is refused (``docs/security.md``). A
preset sidecar beside the file (``net.preset.toml``, see :mod:`salience.presets`) describes the
input; explicit options override it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salience.adapters.keras import KERAS_SUFFIXES
from salience.errors import (
    InvalidInputError,
    MissingFileError,
    MissingPackageError,
    NotFoundError,
    UnsupportedError,
)
from salience.images import ImagePreset
from salience.presets import (
    PresetOverrides,
    fallback_preset,
    find_sidecar,
    read_labels,
    read_sidecar,
)

BUNDLED, FACTORY, ONNX, KERAS, TORCHSCRIPT, EXPORT, TORCH_FILE = (
    "bundled", "factory", "onnx", "keras", "torchscript", "export", "torch file",
)  # fmt: skip
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors")
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
UNPACKED_RATIO = 20
"""How many times its own size an archive (zip, HDF5) may unpack to, plus ``UNPACKED_SLACK``:
torch and Keras store tensors uncompressed, so only a forged file comes near it."""
UNPACKED_SLACK = 16 << 20
CHECKPOINT_RATIO = 4
"""How many times the model's own state a weights file may hold, plus ``UNPACKED_SLACK``: a
training checkpoint holds the weights, an optimizer's moments and little else."""
SAFE_SAVING = (
    "save the weights instead (torch.save(model.state_dict(), 'model.pth') or safetensors) and "
    "open them with --factory package.module:function, or save the model with torch.jit.save "
    "or torch.export"
)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to explain: its adapter, name, input preprocessing and class names."""

    adapter: Any = field(repr=False)
    name: str
    preset: ImagePreset
    class_names: list[str] = field(repr=False)


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
    mean, std : sequence of 3 floats, optional
        Normalization per channel, on pixel values in [0, 1], in the model's channel order.
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
    trust_pickle : bool
        Run what the file carries: unpickle full models, load Keras Lambda layers, exported
        programs outside the checked subset and TorchScript code that reaches files (see
        ``docs/security.md``).
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
    trust_pickle: bool = False

    def given(self) -> list[str]:
        """The names of the options that were set."""
        return [
            name for name, value in vars(self).items() if value is not None and value is not False
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
        )


def model_kind(model: str, options: LoadOptions | None = None) -> str:
    """What ``model`` names: one of ``bundled``, ``factory``, ``onnx``, ``keras``,
    ``torchscript``, ``export`` or ``torch file`` (a state dict or a pickled model).

    Raises
    ------
    FileNotFoundError
        For a path that does not exist and names nothing else.
    """
    from salience.registry import available
    from salience.zoo import MODEL

    options = options or LoadOptions()
    path = Path(model)
    exists = path.exists()
    if not exists and model.strip().lower() in available(MODEL):
        return BUNDLED
    if not exists and _FACTORY.fullmatch(model.strip()):
        return FACTORY
    if options.factory is not None:
        return FACTORY  # the file holds weights for the factory
    if not exists and not path.suffix and len(path.parts) == 1:
        return BUNDLED  # a name, not a path: the registry says which names it knows
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ONNX
    if suffix in KERAS_SUFFIXES:
        return KERAS
    if suffix == ".pt2":
        return EXPORT
    if not exists:
        raise MissingFileError(
            f"no model file {model}; give a bundled model (salience models lists them), a file "
            "(.pt, .pt2, .pth, .safetensors, .keras, .h5, .onnx) or package.module:function"
        )
    if path.is_dir():
        raise IsADirectoryError(f"{model} is a folder; give the model file in it")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if "config.json" in names and any(n.endswith("weights.h5") for n in names):
            return KERAS
        if any(n.endswith("/archive_format") for n in names):
            return EXPORT
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return TORCHSCRIPT
        return TORCH_FILE
    with open(path, "rb") as file:
        head = file.read(len(_HDF5_SIGNATURE))
    if head == _HDF5_SIGNATURE:
        return KERAS
    return TORCH_FILE if suffix in TORCH_SUFFIXES else ONNX


def is_onnx(model: str) -> bool:
    """Whether ``model`` names an ONNX file rather than another kind of model."""
    try:
        return model_kind(model) == ONNX
    except OSError:
        return model.lower().endswith(".onnx")


def open_model(model: str, options: LoadOptions | None = None, *, fuse: bool = True) -> LoadedModel:
    """Open the model named by ``model``, with its preprocessing and class names.

    Parameters
    ----------
    model : str
        A bundled model name, ``package.module:function``, or a model file (see the module
        docs for the formats).
    options : LoadOptions, optional
        How to open it, and overrides of its preset sidecar and metadata.
    fuse : bool
        Run long perturbation passes of traceable bundled models on a fused copy.
    """
    options = options or LoadOptions()
    kind = model_kind(model, options)
    if kind == BUNDLED:
        return _open_bundled(model, options, fuse=fuse)
    if options.weights is not None and kind != FACTORY:
        raise InvalidInputError(
            f"weights go with a factory (package.module:function), not with the {kind} {model}"
        )
    if options.input_name is not None and kind != ONNX:
        raise InvalidInputError(
            f"an input name (--input-name) is for ONNX models, not the {kind} {model}"
        )
    if kind == FACTORY and _FACTORY.fullmatch(model.strip()) and options.factory is not None:
        raise InvalidInputError(f"give the factory once: {model} or factory={options.factory}")
    if kind != FACTORY and Path(model).is_file():
        check_unpacked_size(model)
    factory_named = kind == FACTORY and options.factory is None
    model_file = (options.weights or "") if factory_named else model  # where a sidecar lies
    settings = options.overrides().over(_sidecar(options, model_file))
    adapter, name, base, metadata_names = _OPENERS[kind](model, options, settings)
    preset = settings.apply(base) if settings.given() else base
    names = _class_names(adapter, name, preset, settings, metadata_names)
    return LoadedModel(adapter, name, preset, names)


def _open_bundled(model: str, options: LoadOptions, *, fuse: bool) -> LoadedModel:
    if given := options.given():
        raise InvalidInputError(
            f"{', '.join(given)} apply to model files and factories, not to the bundled model "
            f"{model} (its preprocessing is known)"
        )
    from salience.adapters.torch import TorchAdapter
    from salience.zoo import load_model, model_spec

    spec = model_spec(model)
    adapter = TorchAdapter(load_model(spec.name), fuse=fuse)
    return LoadedModel(adapter, spec.name, spec.preset, list(spec.class_names()))


def _sidecar(options: LoadOptions, model_file: str) -> PresetOverrides:
    if options.preset is not None:
        return read_sidecar(options.preset)
    found = find_sidecar(model_file) if model_file and Path(model_file).is_file() else None
    return read_sidecar(found) if found is not None else PresetOverrides()


def _class_names(
    adapter: Any,
    name: str,
    preset: ImagePreset,
    settings: PresetOverrides,
    metadata_names: Sequence[str] | None,
) -> list[str]:
    """Names from the labels setting, else the model's metadata, else ``class i``.

    The model runs once on a blank image of the preset's size: that counts its outputs and
    checks that the preset fits it.
    """
    import torch

    crop = preset.crop if preset.crop is not None else (224, 224)
    height, width = (crop, crop) if isinstance(crop, int) else crop
    blank = preset.normalize(torch.zeros(1, 3, height, width))
    outputs = adapter.forward(blank)
    count = int(outputs.shape[-1]) if outputs.ndim >= 2 else 1
    labels = settings.labels
    if isinstance(labels, Path):
        names, source = list(read_labels(labels)), str(labels)
    elif labels is not None:
        names, source = list(labels), "the preset's labels"
    elif metadata_names:
        names, source = list(metadata_names), f"the metadata of {name}"
    else:
        return [f"class {i}" for i in range(count)]
    if len(names) != count:
        raise InvalidInputError(
            f"{source} names {len(names)} classes but {name} has {count} outputs"
        )
    return names


# -- openers: (model, options, settings) -> (adapter, name, base preset, metadata names) ------
_Opened = tuple[Any, str, ImagePreset, Sequence[str] | None]


def _open_onnx(path: str, options: LoadOptions, settings: PresetOverrides) -> _Opened:
    from salience.adapters.onnx import OnnxAdapter

    adapter = OnnxAdapter(path, input_name=options.input_name, layout=settings.layout)
    return adapter, adapter.name, adapter.preset(), adapter.class_names()


def _open_keras(path: str, options: LoadOptions, settings: PresetOverrides) -> _Opened:
    from salience.adapters.keras import KerasAdapter, load_keras_model

    model = load_keras_model(path, trust_code=options.trust_pickle)
    adapter = KerasAdapter(model, layout=settings.layout)
    return adapter, Path(path).name, fallback_preset(adapter.input_size()), None


def _open_torchscript(path: str, options: LoadOptions, settings: PresetOverrides) -> _Opened:
    import torch

    from salience.adapters.program import ProgramAdapter, ScriptedModule, check_scripted_archive

    name = Path(path).name
    _no_layout(settings, name)
    if not options.trust_pickle:
        check_scripted_archive(path)
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as error:
        raise InvalidInputError(
            f"{name} cannot be read as a TorchScript module ({_first_line(error)}); it may be "
            "truncated: save it again with torch.jit.save"
        ) from error
    for parameter in module.parameters():  # our own copy: no graph for the weights
        parameter.requires_grad_(False)
    return ProgramAdapter(ScriptedModule(module, name)), name, fallback_preset(None), None


def _open_export(path: str, options: LoadOptions, settings: PresetOverrides) -> _Opened:
    from salience.adapters.program import (
        ExportedModule,
        ProgramAdapter,
        UntrustedFileError,
        load_exported_program,
    )

    name = Path(path).name
    _no_layout(settings, name)
    if not Path(path).is_file():
        raise MissingFileError(f"no torch.export program at {path}")
    try:
        program = load_exported_program(path, trust_pickle=options.trust_pickle)
    except UntrustedFileError:
        raise
    except Exception as error:
        raise InvalidInputError(
            f"{name} cannot be read as a torch.export program ({_first_line(error)}); it may be "
            "truncated: save it again with torch.export.save"
        ) from error
    module = ExportedModule(program, name)
    for parameter in module.parameters():  # our own copy: no graph for the weights
        parameter.requires_grad_(False)
    adapter = ProgramAdapter(module)
    return adapter, name, fallback_preset(adapter.input_size()), None


def _open_torch_file(path: str, options: LoadOptions, settings: PresetOverrides) -> _Opened:
    from salience.adapters.torch import TorchAdapter

    name = Path(path).name
    _no_layout(settings, name)
    loaded = _read_torch_file(path, trust_pickle=options.trust_pickle)
    if isinstance(loaded, Mapping):
        raise InvalidInputError(
            f"{name} holds weights only (a state dict); name the code that builds the model: "
            "--factory package.module:function (factory= in Python)"
        )
    return TorchAdapter(loaded), name, fallback_preset(None), None


def _open_factory(model: str, options: LoadOptions, settings: PresetOverrides) -> _Opened:
    from salience.adapters.keras import KerasAdapter, is_keras_model
    from salience.adapters.torch import TorchAdapter

    spec, weights = (options.factory, model) if options.factory else (model, options.weights)
    built = call_factory(spec)
    if weights is not None:
        load_weights(built, weights, trust_pickle=options.trust_pickle)
    name = Path(weights).name if weights is not None else spec
    if is_keras_model(built):
        adapter = KerasAdapter(built, layout=settings.layout)
        return adapter, name, fallback_preset(adapter.input_size()), None
    _no_layout(settings, name)
    return TorchAdapter(built), name, fallback_preset(None), None


_OPENERS: dict[str, Callable[[str, LoadOptions, PresetOverrides], _Opened]] = {
    ONNX: _open_onnx,
    KERAS: _open_keras,
    TORCHSCRIPT: _open_torchscript,
    EXPORT: _open_export,
    TORCH_FILE: _open_torch_file,
    FACTORY: _open_factory,
}


def _no_layout(settings: PresetOverrides, name: str) -> None:
    if settings.layout not in (None, "nchw"):
        raise InvalidInputError(
            f"{name} is a PyTorch model: it takes NCHW inputs, not {settings.layout}"
        )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# -- factories and weights ------------------------------------------------------------------
def call_factory(spec: str) -> Any:
    """Import ``package.module:function`` and call it with no arguments; return the model."""
    import torch

    from salience.adapters.keras import is_keras_model

    if not _FACTORY.fullmatch(spec.strip()):
        raise InvalidInputError(f"a factory is written package.module:function, got {spec!r}")
    module_name, _, attribute = spec.strip().partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise MissingPackageError(
            f"cannot import {module_name} for the factory {spec} ({_first_line(error)}); install "
            "it or add its folder to PYTHONPATH"
        ) from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise NotFoundError(f"{module_name} has no {attribute} (the factory {spec})")
        target = getattr(target, part)
    if not callable(target):
        raise UnsupportedError(f"the factory {spec} is a {type(target).__name__}, not a function")
    built = target()
    if not (isinstance(built, torch.nn.Module) or is_keras_model(built)):
        raise UnsupportedError(
            f"the factory {spec} returned a {type(built).__name__}; it must return a "
            "torch.nn.Module or a Keras model"
        )
    return built


def load_weights(model: Any, path: str, *, trust_pickle: bool = False) -> None:
    """Load a weights file into a freshly built ``model`` (a torch module or a Keras model).

    Raises
    ------
    ValueError
        When the file's tensors do not fit the model (missing, unexpected or mis-shaped keys),
        or when it holds far more than the model needs (see :func:`check_unpacked_size` and
        ``CHECKPOINT_RATIO``), which is refused before anything is read.
    """
    from salience.adapters.keras import is_keras_model

    name = Path(path).name
    if not Path(path).is_file():
        raise MissingFileError(f"no weights file {path}")
    check_unpacked_size(path)
    if is_keras_model(model):
        try:
            model.load_weights(path)
        except Exception as error:
            raise InvalidInputError(
                f"{name} does not fit the Keras model ({_first_line(error)}); save it with "
                "model.save_weights('model.weights.h5') from the same architecture"
            ) from error
        return
    own = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if (held := unpacked_size(path)) > CHECKPOINT_RATIO * own + UNPACKED_SLACK:
        raise InvalidInputError(
            f"{name} holds {_size_text(held)} of data, more than {CHECKPOINT_RATIO}× the "
            f"{_size_text(own)} of the factory's model; check that the factory builds the "
            "architecture the weights were saved from, or save model.state_dict() alone"
        )
    state = _read_torch_file(path, trust_pickle=trust_pickle)
    if not isinstance(state, Mapping):
        raise InvalidInputError(
            f"{name} holds a whole model, not weights; open it without a factory"
        )
    state = _unwrapped_state(state)
    own = model.state_dict()
    if all(key.startswith("module.") for key in state) and state:  # saved from DataParallel
        state = {key.removeprefix("module."): value for key, value in state.items()}
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and hasattr(state[key], "shape") and state[key].shape != own[key].shape
    ]
    problems = [
        f"{label} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", mismatched),
        )
        if keys
    ]
    if problems:
        raise InvalidInputError(
            f"{name} does not fit the factory's model: {'; '.join(problems)}; check that the "
            "factory builds the architecture the weights were saved from"
        )
    model.load_state_dict(state, strict=True)


def unpacked_size(path: str | Path) -> int:
    """The bytes a model file unpacks to, from its headers (nothing is decompressed).

    A zip counts its entries' declared sizes, an HDF5 file (or one inside the zip, as in a
    ``.keras`` file) its datasets' sizes; any other file its own size.

    Raises
    ------
    ValueError
        For an HDF5 dataset stored in another file (external or virtual storage), which would
        read that file into the model.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return sum(
                _hdf5_size(archive.open(entry), Path(path).name)
                if entry.filename.endswith(".h5")
                else entry.file_size
                for entry in archive.infolist()
            )
    with open(path, "rb") as file:
        if file.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
            return _hdf5_size(path, Path(path).name)
    return Path(path).stat().st_size


def _hdf5_size(source: Any, name: str) -> int:
    if importlib.util.find_spec("h5py") is None:
        return 0  # Keras, which reads HDF5, is not installed either
    import h5py

    datasets: list[Any] = []
    try:
        store = h5py.File(source, "r")
    except OSError:
        return 0  # not HDF5 after all: the reader of its format says so
    with store:
        store.visititems(
            lambda _key, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None
        )
        for dataset in datasets:
            if dataset.external or dataset.is_virtual:
                raise InvalidInputError(
                    f"{name} stores {dataset.name} in another file (HDF5 external or virtual "
                    "storage), which would read that file into the model; save the model again "
                    "with model.save('model.keras')"
                )
        return sum(dataset.nbytes for dataset in datasets)


def check_unpacked_size(path: str | Path) -> None:
    """Refuse a file that claims to unpack to far more than its size (an archive bomb).

    Raises
    ------
    ValueError
        When the file unpacks to more than ``UNPACKED_RATIO`` times its size plus
        ``UNPACKED_SLACK``.
    """
    size = Path(path).stat().st_size
    unpacked = unpacked_size(path)
    if unpacked > UNPACKED_RATIO * size + UNPACKED_SLACK:
        raise InvalidInputError(
            f"{Path(path).name} claims to unpack to {_size_text(unpacked)} from "
            f"{_size_text(size)} (more than {UNPACKED_RATIO}× its size); a model file stores "
            "its tensors uncompressed: save the model again, without compressing the archive"
        )


def _size_text(count: int) -> str:
    """``6.2 kB``, ``67.1 MB``: a size in the unit that reads best."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"


def _unwrapped_state(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint (``{"state_dict": {...}, "epoch": 3}``)."""
    import torch

    if all(isinstance(value, torch.Tensor) for value in state.values()):
        return state
    for key in _STATE_DICT_KEYS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and all(
            isinstance(value, torch.Tensor) for value in inner.values()
        ):
            return inner
    return state


def _read_torch_file(path: str, *, trust_pickle: bool) -> Any:
    """A safetensors file or ``torch.load`` with ``weights_only=True`` (or a trusted pickle)."""
    import torch

    name = Path(path).name
    if Path(path).suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise MissingPackageError(
                "safetensors files need the safetensors package: pip install "
                "'salience[safetensors]'"
            ) from error
        try:
            return load_file(path, device="cpu")
        except Exception as error:
            raise InvalidInputError(
                f"{name} cannot be read as safetensors ({_first_line(error)}); it may be "
                "truncated: save it again with safetensors.torch.save_file"
            ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error) and "GLOBAL" not in str(error):
            raise _unreadable(name, error) from error
        if not trust_pickle:
            raise InvalidInputError(
                f"{name} is a pickled model: loading it runs whatever code the file carries "
                f"(arbitrary code execution). {SAFE_SAVING[0].upper()}{SAFE_SAVING[1:]}; if you "
                "trust the file, pass --trust-pickle (trust_pickle=True)"
            ) from error
    except Exception as error:
        raise _unreadable(name, error) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise InvalidInputError(
            f"{name} is a pickled model that cannot be unpickled here ({_first_line(error)}); "
            f"the code of its classes must be importable, or {SAFE_SAVING}"
        ) from error


def _unreadable(name: str, error: BaseException) -> ValueError:
    return ValueError(
        f"{name} is not a PyTorch file torch can read ({_first_line(error)}); it may be "
        "truncated or of another format: save it again (torch.save, torch.jit.save, "
        "safetensors)"
    )


__all__ = [
    "LoadOptions",
    "LoadedModel",
    "call_factory",
    "check_unpacked_size",
    "is_onnx",
    "load_weights",
    "model_kind",
    "open_model",
    "unpacked_size",
]
