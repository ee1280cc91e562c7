"""``torch.export`` programs (``.pt2``), read without running anything the archive carries.

``torch.export.load`` unpickles an archive's sample inputs, evaluates its shape expressions
as Python and imports what its tree specs name; :func:`load_exported_program` reads the
archive itself and admits only a graph of PyTorch operators (see ``docs/security.md``).
"""

from __future__ import annotations

import io
import json
import keyword
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from salience.errors import InvalidInputError, MissingFileError, first_line
from salience.models.channels import nchw_channels
from salience.models.formats import (
    FileHead,
    ModelFormat,
    Opened,
    no_layout,
    register_format,
)
from salience.models.presets import fallback_preset
from salience.models.safety import FILE_OPERATORS, UntrustedFileError, untrusted

if TYPE_CHECKING:
    from salience.models.options import LoadOptions
    from salience.models.presets import PresetOverrides

KIND = "export"
_PROGRAM_NAMESPACES = ("aten", "prims")
_SAFE_TEXT = re.compile(r"[A-Za-z0-9_.+\-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_DUNDER = re.compile(r"(?:^|\.)__\w*__(?:\.|$)")
# Shape expressions are sympy's srepr: calls of these, integers and quoted symbol names. No
# Pow, LShift or Float (precision): a few characters of those can ask for numbers of any size.
_EXPRESSION = re.compile(r"[A-Za-z0-9_ (),=\-]*")
_EXPRESSION_WORD = re.compile(
    r"Symbol|Integer|Rational|Add|Mul|Mod|Max|Min|Abs|Eq|Ne|Lt|Le|Gt|Ge|StrictGreaterThan|"
    r"StrictLessThan|GreaterThan|LessThan|Equality|Unequality|And|Or|Not|true|false|True|"
    r"False|oo|zoo|nan|Infinity|NegativeInfinity|NegativeOne|One|Zero|Half|integer|positive|"
    r"nonnegative|negative|real|finite|CeilDiv|CeilToInt|CleanDiv|FloatTrueDiv|FloorDiv|"
    r"FloorToInt|Identity|IntTrueDiv|IsNonOverlappingAndDenseIndicator|ModularIndexing|"
    r"PythonMod|RShift|RoundToInt|ToFloat|TruncToFloat|TruncToInt|Where|ceiling|floor|"
    r"[a-z]{1,3}\d+"
)
_TREE_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict"})
# arithmetic on sizes (no pow or lshift, for the same reason)
_SYMBOLIC_OPERATOR = re.compile(
    r"_operator\.add|_operator\.and_|_operator\.eq|_operator\.floordiv|_operator\.ge|"
    r"_operator\.gt|_operator\.le|_operator\.lt|_operator\.mod|_operator\.mul|"
    r"_operator\.ne|_operator\.neg|_operator\.or_|_operator\.pos|_operator\.sub|"
    r"_operator\.truediv|math\.trunc|torch\.sym_float|torch\.sym_int|torch\.sym_ite|"
    r"torch\.sym_max|torch\.sym_min|torch\.sym_not"
)
_REFUSED_ARGUMENTS = ("as_graph", "as_custom_obj", "as_operator", "custom_obj")
MODEL_NAME = "model"


def load_exported_program(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """Read a ``torch.export`` archive (``.pt2``) without running anything it carries.

    ``torch.export.load`` unpickles the archive's sample inputs (and pickled weights) with
    ``weights_only=False``, evaluates its shape expressions with ``sympy.sympify``, imports
    the modules its tree specs name and calls any function under ``torch`` its graph names.
    Here the sample inputs are never read (a program runs without them), tensors are read raw
    or with ``weights_only=True``, and the program is checked first: a graph of ``aten`` and
    ``prims`` operators (none of :data:`FILE_OPERATORS`), shape arithmetic on symbols, plain
    names, tuple/list/dict inputs and outputs.

    Parameters
    ----------
    path : path
        The archive.
    trust_pickle : bool
        For a program that falls outside that subset (pickled objects, custom operators,
        nested graphs), load it with ``torch.export.load``, which runs what it carries.

    Raises
    ------
    UntrustedFileError
        When the program falls outside that subset and ``trust_pickle`` is false.
    """
    try:
        return _read_exported_program(str(path))
    except UntrustedFileError:
        if not trust_pickle:
            raise
    except ImportError as error:  # a torch without the archive reader this relies on
        if not trust_pickle:
            raise UntrustedFileError(
                f"{Path(path).name} is not opened: this torch ({torch.__version__}) has no "
                "archive reader salience can check, and torch.export.load runs code from the "
                "file; upgrade torch, or pass --trust-pickle (trust_pickle=True) if you trust it"
            ) from error
    return torch.export.load(str(path))


def _read_exported_program(path: str) -> torch.export.ExportedProgram:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.pt2_archive import constants as archive
    from torch.export.pt2_archive._package import PT2ArchiveReader

    name = Path(path).name
    with PT2ArchiveReader(path) as reader:
        if reader.read_string(archive.ARCHIVE_VERSION_PATH) != archive.ARCHIVE_VERSION_VALUE:
            raise InvalidInputError(f"{name} was saved by another version of torch.export")
        records = set(reader.get_file_names())  # AOTInductor libraries (native code): unread
        program_file = archive.MODELS_FILENAME_FORMAT.format(MODEL_NAME)
        if program_file not in records:
            raise InvalidInputError(f"{name} holds no program named {MODEL_NAME!r}")
        document = json.loads(reader.read_string(program_file))
        _check_program(document, name)
        weights = _read_payloads(reader, archive.WEIGHTS_CONFIG_FILENAME_FORMAT, archive, name)
        constants = _read_payloads(reader, archive.CONSTANTS_CONFIG_FILENAME_FORMAT, archive, name)
    serialized = _dict_to_dataclass(schema.ExportedProgram, document)
    return ExportedProgramDeserializer().deserialize(serialized, weights, constants, None)


def _check_program(document: dict[str, Any], name: str) -> None:
    """Refuse what would run code; drop what the program does not need to run."""
    document["guards_code"] = []  # Python source, executed by ExportedProgram.module()
    graph_module = document.get("graph_module")
    if not isinstance(graph_module, dict) or not isinstance(graph_module.get("graph"), dict):
        raise InvalidInputError(f"{name} holds no program graph")
    graph_module["metadata"] = {}
    graph_module["treespec_namedtuple_fields"] = {}
    for node in graph_module["graph"].get("nodes", []):
        node["metadata"] = {}  # stack traces and module paths: text only, not needed to run
        _check_target(node.get("target"), name)
    _check_value(document, "", name)


def _check_target(target: object, name: str) -> None:
    if isinstance(target, str) and _SYMBOLIC_OPERATOR.fullmatch(target):
        return
    parts = target.split(".") if isinstance(target, str) else []
    operator = None
    if len(parts) == 5 and parts[:2] == ["torch", "ops"] and parts[2] in _PROGRAM_NAMESPACES:
        try:
            operator = getattr(getattr(getattr(torch.ops, parts[2]), parts[3]), parts[4])
        except (AttributeError, RuntimeError):
            operator = None
    if not isinstance(operator, torch._ops.OpOverload) or operator.name() in FILE_OPERATORS:
        untrusted(name, f"its graph calls {str(target)[:80]}, not a PyTorch operator")


def _check_value(value: object, key: str, name: str) -> None:
    if isinstance(value, dict):
        for field, item in value.items():
            if field in _REFUSED_ARGUMENTS and item:
                untrusted(name, f"it passes {field.removeprefix('as_')} objects between nodes")
            _check_text(field, "", name)
            _check_value(item, field, name)
    elif isinstance(value, list):
        for item in value:
            _check_value(item, key, name)
    elif isinstance(value, str):
        _check_text(value, key, name)


def _check_text(text: str, key: str, name: str) -> None:
    if key in ("as_string", "as_strings", "torch_version", "target"):
        return  # operator arguments (passed as values, never as code); checked apart
    if key == "expr_str":
        _check_expression(text, name)
    elif key in ("in_spec", "out_spec"):
        _check_tree_spec(text, name)
    elif key in ("name", "as_name"):
        if not _IDENTIFIER.fullmatch(text) or keyword.iskeyword(text):
            untrusted(name, f"it names a value {text[:40]!r}")
    elif not _SAFE_TEXT.fullmatch(text) or _DUNDER.search(text):
        untrusted(name, f"its {key or 'program'} holds the text {text[:40]!r}")


def _check_expression(text: str, name: str) -> None:
    """Shape arithmetic only: ``sympy.sympify`` evaluates the text as Python."""
    bare = re.sub(r"'[a-z]{1,3}\d+'", "s0", text)  # Symbol('s77', ...): quoted symbol names
    words = re.findall(r"[A-Za-z_]\w*", bare)
    if not (
        len(text) <= 4000
        and _EXPRESSION.fullmatch(bare)
        and all(_EXPRESSION_WORD.fullmatch(word) for word in words)
    ):
        untrusted(name, f"its shapes hold the expression {text[:60]!r}")


def _check_tree_spec(text: str, name: str) -> None:
    """Inputs and outputs in tuples, lists and dicts (other types import modules)."""

    def check(spec: object) -> None:
        if not isinstance(spec, dict) or spec.get("type") not in _TREE_TYPES:
            untrusted(name, "its inputs or outputs are of a custom container type")
        context = spec.get("context")
        keys = json.loads(context) if isinstance(context, str) else context
        if keys is not None and not (
            isinstance(keys, list)
            and all(isinstance(k, str) and _IDENTIFIER.fullmatch(k) for k in keys)
        ):
            untrusted(name, "its inputs or outputs have keys that are not names")
        for child in spec.get("children_spec") or []:
            check(child)

    try:
        protocol_and_spec = json.loads(text)
    except ValueError:
        untrusted(name, "its input or output structure cannot be read")
    if not isinstance(protocol_and_spec, list) or len(protocol_and_spec) != 2:
        untrusted(name, "its input or output structure cannot be read")
    check(protocol_and_spec[1])


def _read_payloads(reader: Any, config_format: str, archive: Any, name: str) -> dict[str, Any]:
    """The program's weights or constants: raw tensors, or tensors unpickled weights-only.

    A tensor's storage is its record in the archive: a record of 0 bytes must hold no
    elements (torch would allocate whatever size the file claims, as zeros).
    """
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        _dict_to_dataclass,
        deserialize_size,
        deserialize_storage_offset,
        deserialize_stride,
    )
    from torch.export.pt2_archive._package import _build_file_map

    weights = config_format == archive.WEIGHTS_CONFIG_FILENAME_FORMAT
    folder = archive.WEIGHTS_DIR if weights else archive.CONSTANTS_DIR
    config_file = config_format.format(MODEL_NAME)
    records = reader.get_file_names()
    if f"{folder}{MODEL_NAME}.pt" in records:  # the format of torch 2.7
        return _unpickle_tensors(reader.read_bytes(f"{folder}{MODEL_NAME}.pt"), name)
    if config_file not in records:
        raise InvalidInputError(f"{name} has no {config_file}")
    document = json.loads(reader.read_string(config_file))
    _check_value(document, "", name)
    config = _dict_to_dataclass(schema.PayloadConfig, document)
    tensor_prefix = (
        archive.WEIGHT_FILENAME_PREFIX if weights else archive.TENSOR_CONSTANT_FILENAME_PREFIX
    )
    for payload in config.config.values():
        if not payload.path_name.startswith(tensor_prefix):
            untrusted(name, f"it holds the object {payload.path_name[:40]} (a pickle)")
        record = f"{folder}{payload.path_name}"
        if record not in records:
            raise InvalidInputError(f"{name} has no {record}")
        if not payload.use_pickle:
            _check_record_size(reader, record, payload.tensor_meta, name)
    flat = _build_file_map(reader, config, folder)
    tensors: dict[str, Any] = {}
    for key, payload in config.config.items():
        meta = payload.tensor_meta
        if payload.use_pickle:
            tensors[key] = _unpickle_tensors(
                reader.read_bytes(f"{folder}{payload.path_name}"), name
            )
            continue
        if meta is None:
            raise InvalidInputError(f"{name} has no shape for {key}")
        tensor = torch.as_strided(
            flat[payload.path_name],
            deserialize_size(meta.sizes),
            deserialize_stride(meta.strides),
            deserialize_storage_offset(meta.storage_offset),
        )
        if payload.is_param:
            tensor = nn.Parameter(tensor, requires_grad=meta.requires_grad)
        tensors[key] = tensor
    return tensors


def _check_record_size(reader: Any, record: str, meta: Any, name: str) -> None:
    """A record of 0 bytes holds no elements: torch would allocate the claimed size as zeros."""
    if meta is None or reader.archive_file.get_record_size(record) > 0:
        return
    claimed = [size.as_int if size.type == "as_int" else None for size in meta.sizes]
    if None in claimed or math.prod(claimed) != 0:
        raise InvalidInputError(
            f"{name} claims a tensor of shape {claimed} in the empty record {record}; the file "
            "is damaged or forged: export the model again with torch.export.save"
        )


def _unpickle_tensors(data: bytes, name: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        untrusted(
            name, f"it holds pickled objects that are not plain tensors ({type(error).__name__})"
        )


def open_export(
    path: str, options: LoadOptions, settings: PresetOverrides, *, fuse: bool = True
) -> Opened:
    """A :class:`~salience.adapters.program.ProgramAdapter` of the archive's program."""
    from salience.adapters.program import ExportedModule, ProgramAdapter

    name = Path(path).name
    no_layout(settings, name)
    if not Path(path).is_file():
        raise MissingFileError(f"no torch.export program at {path}")
    try:
        program = load_exported_program(path, trust_pickle=options.trust_pickle)
    except UntrustedFileError:
        raise
    except Exception as error:
        raise InvalidInputError(
            f"{name} cannot be read as a torch.export program ({first_line(error)}); it may be "
            "truncated: save it again with torch.export.save"
        ) from error
    module = ExportedModule(program, name)
    for parameter in module.parameters():  # our own copy: no graph for the weights
        parameter.requires_grad_(False)
    adapter = ProgramAdapter(module)
    preset = fallback_preset(adapter.input_size(), nchw_channels(module.input_shape))
    return Opened(adapter, name, preset)


def _recognises(head: FileHead) -> bool:
    """A zip archive that says it is a torch.export archive."""
    return head.names is not None and any(n.endswith("/archive_format") for n in head.names)


register_format(
    ModelFormat(
        kind=KIND,
        open=open_export,
        suffixes=(".pt2",),
        recognises=_recognises,
        file_suffixes=(".pt2",),
    )
)

__all__ = ["MODEL_NAME", "load_exported_program", "open_export"]
