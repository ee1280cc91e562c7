"""TensorFlow models: Keras files on the TensorFlow backend, ``tf_keras`` files and SavedModels.

Which backend runs a Keras file is the user's choice, made once per process as Keras itself
makes it: ``--backend tensorflow`` (or ``KERAS_BACKEND=tensorflow``, or ``TF_USE_LEGACY_KERAS=1``,
set before anything imports Keras) sends ``.keras`` and ``.h5`` files here; without it they run
on Keras' torch backend (:mod:`salience.models.keras`). A SavedModel folder (``saved_model.pb``)
is always opened here.

- ``.keras``: Keras 3 on its TensorFlow backend, in safe mode (no Lambda code runs).
- ``.h5``: ``tf_keras`` (Keras 2) when it is installed, else Keras 3; a Lambda layer is refused
  before anything is deserialized.
- a SavedModel with Keras metadata (``keras_metadata.pb``, saved by ``tf_keras``) is loaded as
  the Keras model it was, when ``tf_keras`` is installed; any other SavedModel is its serving
  signature, explained by its outputs and input gradients (no layers). Its graph runs TensorFlow
  ops only, no Python; the ops the serving signature reaches are checked against those that read
  or write files, run Python or start processes (see ``docs/security.md``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salience.errors import InvalidInputError, MissingPackageError, first_line
from salience.models.formats import ModelFormat, Opened, register_format
from salience.models.keras import KERAS_SUFFIXES, load_keras_model
from salience.models.presets import fallback_preset
from salience.models.safety import UntrustedFileError

if TYPE_CHECKING:
    from salience.models.options import LoadOptions
    from salience.models.presets import PresetOverrides

KIND = "tensorflow"
BACKENDS = ("torch", "tensorflow")
"""What ``--backend`` chooses between for Keras files."""
SERVING = "serving_default"
UNSAFE_OPS = frozenset(
    {
        # files
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "DeleteFile",
        "ImmutableConst",
        "Save",
        "SaveV2",
        "SaveSlices",
        "Restore",
        "RestoreV2",
        "RestoreSlice",
        "MergeV2Checkpoints",
        "ShardedFilename",
        "LoadAndRemapMatrix",
        "InitializeTableFromTextFile",
        "InitializeTableFromTextFileV2",
        "WholeFileReader",
        "WholeFileReaderV2",
        "TextLineReader",
        "TextLineReaderV2",
        "FixedLengthRecordReader",
        "FixedLengthRecordReaderV2",
        "TFRecordReader",
        "TFRecordReaderV2",
        "LMDBReader",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2",
        "TextLineDataset",
        "DatasetToTFRecord",
        "ExperimentalDatasetToTFRecord",
        "SaveDataset",
        "SaveDatasetV2",
        "LoadDataset",
        "SnapshotDataset",
        "SnapshotDatasetV2",
        "CreateSummaryFileWriter",
        "CreateSummaryDbWriter",
        "WriteSummary",
        "WriteScalarSummary",
        "WriteImageSummary",
        "WriteAudioSummary",
        "WriteHistogramSummary",
        "WriteGraphSummary",
        "WriteRawProtoSummary",
        "PrintV2",
        "DebugIdentity",
        "DebugIdentityV2",
        "DebugIdentityV3",
        # Python, other processes and machines
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "RemoteCall",
        "Send",
        "Recv",
        "_Send",
        "_Recv",
    }
)
"""Ops a serving signature may not reach: they read or write files (a checkpoint's save and
restore ops are the loader's, outside the signature), run Python or reach other processes."""


def requested_backend() -> str:
    """The backend Keras files are to run on: ``KERAS_BACKEND`` when set (``--backend`` sets
    it), else ``tensorflow`` with ``TF_USE_LEGACY_KERAS=1``, else the backend Keras already runs
    on in this process, else ``torch``."""
    import sys

    chosen = os.environ.get("KERAS_BACKEND", "").lower()
    if chosen:
        return chosen
    if _legacy_requested():
        return "tensorflow"
    keras = sys.modules.get("keras")
    return str(keras.backend.backend()) if keras is not None else "torch"


def _legacy_requested() -> bool:
    """``TF_USE_LEGACY_KERAS=1``: Keras 2 (``tf_keras``) is TensorFlow's Keras."""
    return os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")


def use_backend(backend: str) -> None:
    """Run Keras files on ``backend`` (``torch`` or ``tensorflow``) from now on.

    Sets ``KERAS_BACKEND``, which Keras reads once, when it is first imported: a ``.keras``
    file asked for on another backend than the one Keras already runs on in this process is
    refused when opened, with the reason (``tf_keras`` files are not concerned).

    Raises
    ------
    InvalidInputError
        For another backend.
    MissingPackageError
        For ``tensorflow`` when TensorFlow is not installed.
    """
    import importlib.util

    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        raise MissingPackageError(
            "--backend tensorflow needs TensorFlow: pip install 'salience[tensorflow]'"
        )
    os.environ["KERAS_BACKEND"] = backend


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a SavedModel folder."""
    return Path(path, "saved_model.pb").is_file()


def _claims(model: str, options: LoadOptions, exists: bool) -> bool:
    if not exists:
        return False
    if is_saved_model(model):
        return True
    suffix = Path(model).suffix.lower()
    if suffix in (".h5", ".hdf5") and _legacy_requested():
        return True
    return suffix in KERAS_SUFFIXES and requested_backend() == "tensorflow"


def open_tensorflow(
    path: str, options: LoadOptions, settings: PresetOverrides, *, fuse: bool = True
) -> Opened:
    """A TensorFlow adapter of the file's (or folder's) model."""
    from salience.adapters.tensorflow import TensorFlowAdapter

    trust = options.trust_pickle
    if is_saved_model(path):
        if Path(path, "keras_metadata.pb").is_file() and _tf_keras() is not None:
            check_saved_model(path)
            model = load_legacy_keras(path, trust_code=trust)
        else:
            adapter = open_signature(path, layout=settings.layout)
            return Opened(adapter, Path(path).name, fallback_preset(adapter.input_size()))
    elif Path(path).suffix.lower() != ".keras" and _tf_keras() is not None:
        model = load_legacy_keras(path, trust_code=trust)
    else:
        model = load_keras_model(path, trust_code=trust, backend="tensorflow")
    adapter = TensorFlowAdapter(model, layout=settings.layout)
    return Opened(adapter, Path(path).name, fallback_preset(adapter.input_size()))


def _tf_keras() -> Any | None:
    """``tf_keras`` when it is installed (TensorFlow's Keras 2), else None."""
    try:
        import tf_keras
    except ImportError:
        return None
    return tf_keras


def _class_names(config: object) -> Iterator[str]:
    """Every ``class_name`` in a Keras model config (nested models and wrappers included)."""
    if isinstance(config, dict):
        name = config.get("class_name")
        if isinstance(name, str):
            yield name
        for value in config.values():
            yield from _class_names(value)
    elif isinstance(config, list):
        for value in config:
            yield from _class_names(value)


def _legacy_configs(path: Path) -> Iterator[object]:
    """The model configs a ``tf_keras`` file holds: an HDF5 file's ``model_config``, each node
    of a SavedModel's Keras metadata."""
    if path.is_dir():
        from tf_keras.protobuf import saved_metadata_pb2

        metadata = saved_metadata_pb2.SavedMetadata()
        metadata.ParseFromString(Path(path, "keras_metadata.pb").read_bytes())
        for node in metadata.nodes:
            yield json.loads(node.metadata or "{}")
        return
    import h5py

    with h5py.File(path, "r") as file:
        text = file.attrs.get("model_config")
        if text is None:
            raise InvalidInputError(
                f"{path.name} holds no model (only weights?); save the whole model with "
                "model.save('model.h5')"
            )
        yield json.loads(text.decode() if isinstance(text, bytes) else text)


def load_legacy_keras(path: str | os.PathLike[str], *, trust_code: bool = False) -> Any:
    """Load a ``tf_keras`` model (``.h5`` or a SavedModel with Keras metadata) uncompiled.

    A model with a Lambda layer (Python code the file carries, run when it is deserialized) is
    refused unless ``trust_code``; its config is read for that before anything is built.
    """
    tf_keras = _tf_keras()
    if tf_keras is None:
        raise MissingPackageError(
            "Keras 2 models need tf_keras: pip install tf-keras --no-deps (beside tensorflow-cpu)"
        )
    path = Path(path)
    try:
        configs = list(_legacy_configs(path))
    except (OSError, ValueError) as error:
        raise InvalidInputError(
            f"{path.name} cannot be read as a Keras 2 model ({first_line(error)})"
        ) from error
    if not trust_code and any(
        name == "Lambda" for config in configs for name in _class_names(config)
    ):
        raise UntrustedFileError(
            f"{path.name} holds Python code (a Lambda layer) that would run when loading it; if "
            "you trust the file, pass --trust-pickle (trust_pickle=True)"
        )
    try:
        return tf_keras.models.load_model(os.fspath(path), compile=False, safe_mode=not trust_code)
    except Exception as error:
        raise InvalidInputError(
            f"{path.name} cannot be read as a Keras 2 model ({first_line(error)}); custom "
            "layers need their code: open it from a factory (package.module:function)"
        ) from error


def check_saved_model(path: str | os.PathLike[str], signature: str = SERVING) -> None:
    """Refuse a SavedModel whose serving signature reaches an op of :data:`UNSAFE_OPS`.

    The functions the signature calls are followed through the graph's function library
    (``PartitionedCall`` and any op that names a function); the checkpoint's own save and
    restore functions, which the signature does not reach, are the loader's.
    """
    from tensorflow.core.protobuf import saved_model_pb2  # type: ignore[attr-defined]

    folder = Path(path)
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(Path(folder, "saved_model.pb").read_bytes())
    except Exception as error:
        raise InvalidInputError(
            f"{folder.name} is not a valid SavedModel ({first_line(error)})"
        ) from error
    if not proto.meta_graphs:
        raise InvalidInputError(f"{folder.name} holds no graph")
    meta = proto.meta_graphs[0]
    start = _signature_function(meta, signature)
    if start is None:
        raise InvalidInputError(
            f"{folder.name} has no {signature!r} signature of TensorFlow 2; save it with "
            "tf.saved_model.save(model, folder) or model.export(folder)"
        )
    library = {function.signature.name: function for function in meta.graph_def.library.function}
    seen: set[str] = set()
    pending = [start]
    while pending:
        name = pending.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        for node in library[name].node_def:
            if node.op in UNSAFE_OPS:
                raise UntrustedFileError(
                    f"{folder.name} is not opened: its serving signature runs the op "
                    f"{node.op!r}, which reaches files, Python or other processes"
                )
            if node.op in library:
                pending.append(node.op)
            for value in node.attr.values():
                if value.func.name:
                    pending.append(value.func.name)
                pending.extend(f.name for f in value.list.func)


def _signature_function(meta: Any, signature: str) -> str | None:
    """The name of the concrete function behind a TF2 SavedModel's signature."""
    nodes = meta.object_graph_def.nodes
    if not nodes:
        return None
    signatures = next((c.node_id for c in nodes[0].children if c.local_name == "signatures"), None)
    if signatures is None:
        return None
    for child in nodes[signatures].children:
        if child.local_name == signature:
            name = nodes[child.node_id].bare_concrete_function.concrete_function_name
            return name or None
    return None


def open_signature(path: str | os.PathLike[str], *, layout: str | None = None) -> Any:
    """A :class:`~salience.adapters.tensorflow.SignatureAdapter` of a SavedModel's serving
    signature (checked by :func:`check_saved_model` first)."""
    from salience.adapters.tensorflow import SignatureAdapter, import_tensorflow

    check_saved_model(path)
    tf = import_tensorflow()
    name = Path(path).name
    try:
        loaded = tf.saved_model.load(os.fspath(path))
    except Exception as error:
        raise InvalidInputError(
            f"{name} cannot be loaded as a SavedModel ({first_line(error)})"
        ) from error
    function = loaded.signatures[SERVING]
    _, inputs = function.structured_input_signature
    if len(inputs) != 1:
        raise InvalidInputError(
            f"{name}'s serving signature takes {len(inputs)} inputs ({', '.join(inputs)}); "
            "salience feeds one image input"
        )
    ((input_name, spec),) = inputs.items()
    outputs = list(function.structured_outputs)
    if not outputs:
        raise InvalidInputError(f"{name}'s serving signature has no output")
    if not spec.dtype.is_floating:
        raise InvalidInputError(
            f"{name}'s input {input_name!r} takes {spec.dtype.name}; salience feeds float images"
        )
    import torch

    shape = [d if isinstance(d, int) else None for d in spec.shape.as_list()]
    adapter = SignatureAdapter(
        function,
        input_name=input_name,
        output_name=sorted(outputs)[0],
        input_shape=shape,
        layout=layout,
        dtype=getattr(torch, spec.dtype.name),
    )
    adapter.loaded = loaded  # the signature's variables live as long as the adapter
    return adapter


register_format(
    ModelFormat(
        kind=KIND,
        open=open_tensorflow,
        claims_name=_claims,
        file_suffixes=(".keras", ".h5", "a SavedModel folder"),
    )
)

__all__ = [
    "BACKENDS",
    "KIND",
    "UNSAFE_OPS",
    "check_saved_model",
    "is_saved_model",
    "load_legacy_keras",
    "open_signature",
    "open_tensorflow",
    "requested_backend",
    "use_backend",
]
