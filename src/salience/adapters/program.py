"""Run compiled PyTorch programs: TorchScript modules and ``torch.export`` programs.

Both run and differentiate like any module, so gradient and black-box methods work on them
through :class:`~salience.adapters.torch.TorchAdapter`. Their layers, however, run inside a
compiled graph: forward hooks on a TorchScript submodule are refused and an exported program
never calls its submodules, and the ReLUs a backward rule replaces are not Python calls. CAMs
and guided backprop therefore stop with an error that says so, instead of a wrong map.

Opening a program from a file runs none of the file's Python: :func:`load_exported_program`
reads a ``torch.export`` archive without unpickling anything and admits only a graph of
PyTorch operators (see ``docs/security.md``); :func:`check_scripted_archive` refuses TorchScript
code that calls operators reading or writing files.
"""

from __future__ import annotations

import io
import json
import keyword
import math
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from salience.adapters.base import Need, Outputs, ScoreFn
from salience.adapters.layers import LayerError, LayerInfo, LayerLike
from salience.adapters.torch import EvalModeProvider, TorchAdapter
from salience.errors import InvalidInputError, SalienceError

TORCHSCRIPT = "TorchScript module"
EXPORTED = "torch.export program"


class CompiledModule(nn.Module):
    """A compiled program as a module: it runs and differentiates, its layers cannot be hooked.

    Asking for a layer (``get_submodule``) raises a :class:`LayerError` that says so, so CAMs
    stop before any work.

    Parameters
    ----------
    program : nn.Module
        The program's module.
    name : str
        How errors name it (the file name).
    """

    kind = "compiled program"

    def __init__(self, program: nn.Module, name: str = "the model") -> None:
        super().__init__()
        self.name = name
        self.program = program

    def no_layers(self) -> LayerError:
        """The error for a method that needs a layer."""
        return LayerError(
            f"{self.name} is a {self.kind}: its layers run inside a compiled graph that cannot "
            "be hooked, so CAMs do not run on it (gradient and black-box methods do); for CAMs, "
            "open the model from its code: --model package.module:function --weights FILE"
        )

    def get_submodule(self, target: str) -> nn.Module:
        """This module for ``""``; any layer raises :class:`LayerError`."""
        if not target:
            return self
        raise self.no_layers()

    def forward(self, x: Tensor) -> Any:
        """The program's output for the batch ``x``."""
        return self.program(x)


class ScriptedModule(CompiledModule):
    """A TorchScript module (``torch.jit.load``)."""

    kind = TORCHSCRIPT


class ExportedModule(CompiledModule):
    """A ``torch.export`` program: batches of any size, shapes checked up front.

    An exported program is captured in one mode (train or eval), so :meth:`train` changes only
    this wrapper's flag. A program exported with a fixed batch size runs any batch in chunks of
    that size (the last one padded); gradients flow through the chunks.

    Parameters
    ----------
    program : torch.export.ExportedProgram
        A program with one tensor input.
    name : str
        How errors name it (the file name).
    """

    kind = EXPORTED

    def __init__(self, program: torch.export.ExportedProgram, name: str = "the program") -> None:
        inputs = [
            node
            for node in program.graph.nodes
            if node.op == "placeholder" and node.name in program.graph_signature.user_inputs
        ]
        if len(inputs) != 1:
            raise InvalidInputError(
                f"{name} takes {len(inputs)} inputs; salience explains programs with one image "
                "input: export a module that takes the image only"
            )
        super().__init__(program.module(), name)
        value = inputs[0].meta.get("val")
        shape = getattr(value, "shape", None)
        self.input_shape: tuple[int | None, ...] | None = (
            None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)
        )

    def train(self, mode: bool = True) -> ExportedModule:
        """Set this wrapper's flag only: the program's mode was fixed when it was exported."""
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Any:
        """The program's output for the batch ``x``."""
        expected = self.input_shape
        if expected is None:
            return self.program(x)
        fits = x.ndim == len(expected) and all(
            e is None or e == s for e, s in zip(expected[1:], x.shape[1:], strict=True)
        )
        if not fits:
            wanted = ", ".join("N" if i == 0 else str(d or "?") for i, d in enumerate(expected))
            raise InvalidInputError(
                f"{self.name} was exported for inputs ({wanted}), got {tuple(x.shape)}; prepare "
                "images at that size (--size, or a preset sidecar) or export with dynamic shapes"
            )
        batch = expected[0]
        if batch is None or x.shape[0] == batch:
            return self.program(x)
        parts = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            rows = chunk.shape[0]
            if rows < batch:
                chunk = torch.cat([chunk, chunk.new_zeros(batch - rows, *chunk.shape[1:])])
            parts.append(self.program(chunk)[:rows])
        return torch.cat(parts)


class ProgramAdapter(TorchAdapter):
    """Adapter for compiled programs: outputs and input gradients, no layer captures.

    Parameters
    ----------
    program : CompiledModule, torch.jit.ScriptModule or torch.export.ExportedProgram
        The program; a TorchScript module or exported program is wrapped. It runs itself (a
        deep copy of a TorchScript module has non-leaf parameters), in eval mode, with every
        module's flag restored after each call.
    name : str
        How errors name the model (its file name).
    """

    def __init__(self, program: Any, *, name: str | None = None) -> None:
        if isinstance(program, torch.export.ExportedProgram):
            program = ExportedModule(program, name or "the program")
        elif not isinstance(program, CompiledModule):
            program = ScriptedModule(program, name or "the model")
        super().__init__(program, strip_softmax=False, provider=EvalModeProvider(program))
        self.name = program.name
        self.kind = program.kind

    def layer_names(self) -> Sequence[str]:
        """None: a compiled program's layers cannot be captured."""
        return []

    def layer_table(self, x: Tensor) -> list[LayerInfo]:
        """Not available for compiled programs."""
        raise self.model.no_layers()

    def resolve_layer(self, layer: LayerLike, x: Tensor) -> str:
        """Not available for compiled programs."""
        raise self.model.no_layers()

    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of an exported program's static NCHW input shape, if it has one."""
        shape = getattr(self.model, "input_shape", None)
        if shape is None or len(shape) != 4 or not (shape[2] and shape[3]):
            return None
        return shape[2], shape[3]

    def run(self, x: Tensor, score: ScoreFn, need: Need) -> Outputs:
        """One pass with input gradients; layer captures and backward rules are refused."""
        if need.layer is not None:
            raise self.model.no_layers()
        if need.backward_rule is not None:
            raise InvalidInputError(
                f"{self.name} is a {self.kind}: its ReLUs run inside a compiled graph, so the "
                f"{need.backward_rule} backward rule (guided backprop) cannot be applied; open "
                "the model from its code: --model package.module:function --weights FILE"
            )
        return super().run(x, score, need)

    def scaled_layer_outputs(
        self, x: Tensor, layer: str, scales: Tensor, *, channel_dim: int = 1
    ) -> Tensor:
        """Not available for compiled programs."""
        raise self.model.no_layers()


# -- reading program files without running what they carry ---------------------------------
FILE_OPERATORS = frozenset({"aten::from_file", "aten::save", "debugprims::load_tensor"})
"""Operators that read or write a file named by the program (``torch.from_file(name,
shared=True)`` writes into it): a program from a file may not call them."""
_TORCHBIND = re.compile(r"torch\.classes")
_SCRIPT_REFUSED = re.compile(
    r"\b(from_file|save|load_tensor|rpc_async|rpc_sync|rpc_remote|c10d|_c10d_functional)\b"
    r"|torch\.classes"
)
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


class UntrustedFileError(SalienceError, ValueError):
    """A program file holds something that would run code from the file if it were opened."""


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


def _untrusted(name: str, reason: str) -> None:
    raise UntrustedFileError(
        f"{name} is not opened: {reason}, which salience runs only from a trusted file; export "
        "the model again from plain PyTorch layers, or pass --trust-pickle (trust_pickle=True) "
        "if you trust the file"
    )


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
        _untrusted(name, f"its graph calls {str(target)[:80]}, not a PyTorch operator")


def _check_value(value: object, key: str, name: str) -> None:
    if isinstance(value, dict):
        for field, item in value.items():
            if field in _REFUSED_ARGUMENTS and item:
                _untrusted(name, f"it passes {field.removeprefix('as_')} objects between nodes")
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
            _untrusted(name, f"it names a value {text[:40]!r}")
    elif not _SAFE_TEXT.fullmatch(text) or _DUNDER.search(text):
        _untrusted(name, f"its {key or 'program'} holds the text {text[:40]!r}")


def _check_expression(text: str, name: str) -> None:
    """Shape arithmetic only: ``sympy.sympify`` evaluates the text as Python."""
    bare = re.sub(r"'[a-z]{1,3}\d+'", "s0", text)  # Symbol('s77', ...): quoted symbol names
    words = re.findall(r"[A-Za-z_]\w*", bare)
    if not (
        len(text) <= 4000
        and _EXPRESSION.fullmatch(bare)
        and all(_EXPRESSION_WORD.fullmatch(word) for word in words)
    ):
        _untrusted(name, f"its shapes hold the expression {text[:60]!r}")


def _check_tree_spec(text: str, name: str) -> None:
    """Inputs and outputs in tuples, lists and dicts (other types import modules)."""

    def check(spec: object) -> None:
        if not isinstance(spec, dict) or spec.get("type") not in _TREE_TYPES:
            _untrusted(name, "its inputs or outputs are of a custom container type")
        context = spec.get("context")
        keys = json.loads(context) if isinstance(context, str) else context
        if keys is not None and not (
            isinstance(keys, list)
            and all(isinstance(k, str) and _IDENTIFIER.fullmatch(k) for k in keys)
        ):
            _untrusted(name, "its inputs or outputs have keys that are not names")
        for child in spec.get("children_spec") or []:
            check(child)

    try:
        protocol_and_spec = json.loads(text)
    except ValueError:
        _untrusted(name, "its input or output structure cannot be read")
    if not isinstance(protocol_and_spec, list) or len(protocol_and_spec) != 2:
        _untrusted(name, "its input or output structure cannot be read")
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
            _untrusted(name, f"it holds the object {payload.path_name[:40]} (a pickle)")
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
        _untrusted(
            name, f"it holds pickled objects that are not plain tensors ({type(error).__name__})"
        )


def check_scripted_archive(path: str | Path) -> None:
    """Refuse a TorchScript file whose code reaches files, the network or TorchBind classes.

    TorchScript code runs when the file is loaded (``__setstate__``) and on every forward: a
    program of PyTorch operators, without Python, but :data:`FILE_OPERATORS`, RPC and
    distributed operators and TorchBind classes (native objects, also in the pickles) reach
    beyond the model. The check reads the code and pickles, never the tensors' records.
    """
    name = Path(path).name
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            in_code = "/code/" in entry.filename and entry.filename.endswith(".py")
            if not (in_code or entry.filename.endswith(".pkl")):
                continue
            text = archive.read(entry).decode("utf-8", errors="replace")
            if match := (_SCRIPT_REFUSED if in_code else _TORCHBIND).search(text):
                _untrusted(name, f"its TorchScript code uses {match.group(0)}")


__all__ = [
    "EXPORTED",
    "FILE_OPERATORS",
    "TORCHSCRIPT",
    "CompiledModule",
    "ExportedModule",
    "ProgramAdapter",
    "ScriptedModule",
    "UntrustedFileError",
    "check_scripted_archive",
    "load_exported_program",
]
