"""A private, faster copy of a user's model for inference: BatchNorm folded into convolutions.

The copy never changes the user's model, is verified against it on the first batch (outputs equal
to 1e-4, else the unfolded copy is used), and is provably current: every cache built from a
model (this copy, the fused copy, layer tables, fan-out verdicts, the Keras copy) is keyed by the
model's :class:`ModelState`, which :func:`model_state` renews whenever anything the model
computes with differs from what the cache was built from:

- the module tree: every module's name, type and identity (a replaced ``model.fc`` or
  ``model[2]``, a module added or removed);
- every module's attributes (``eps``, ``inplace``, ``padding``, a ``forward`` set on the
  instance, ...; ``training`` aside, since the copy always runs in eval mode) and its hook
  dictionaries (hooks registered after the copy was made);
- the names, identity, dtype, device and shape of every parameter and buffer, and their
  CONTENTS: the 128-bit XXH3 digest of each tensor's bytes, read in place, against the digest
  recorded with the state (bytes, so NaN equals NaN and -0.0 differs from 0.0; a tensor that is
  not a dense CPU tensor is compared bit for bit with a copy instead). Tensor versions cannot
  prove a tensor unchanged: ``p.data.mul_(2)`` writes through a tensor with a version counter
  of its own, and so do writes through ``numpy()`` views.

Attributes that hold other objects (a function, a config object) are compared by identity, and
containers of them element by element; an object mutated in place is not seen.

Cost (``bench/freshness.py``: the bundled EfficientNet-Lite0, 296 tensors, 18.8 MB, against one
224×224 ``salience.Gradient`` call on 2 threads of a 2-core AMD EPYC, weights out of cache as
they are between calls): 6.6 ms, about 8% of that call, its cheapest use (2.2 ms the tree walk,
3.8 ms the digests: reading 18.8 MB at 5 GB/s); a multi-pass method pays it once per call, under
1% of the call. Alternatives measured: ``memcmp`` against a copy of the weights costs the same
and doubles their memory; ``torch.equal`` on integer views costs twice as much, zlib's CRC32
three times; version counters and pointers alone (0.8%) miss writes through ``.data``. Hashing
in a thread beside the pass did not hide the cost (the digest holds the interpreter lock and the
pass uses both cores). Reading every weight once is the floor of an exact check.

Decisions taken on a probe batch (whether folding is exact) are cached only when the probe's
outputs are finite: a non-finite output proves nothing about the copy.
"""

from __future__ import annotations

import contextvars
import copy
import ctypes
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import xxhash
from torch import Tensor, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
EQUALITY_TOLERANCE = 1e-4
_FOLDED_ATTRIBUTE = "_salience_folded_convolutions"


class CopyError(RuntimeError):
    """The model cannot be deep-copied (it holds locks, open files, ...)."""


Node = tuple[str, object]
"""A named object whose attributes a model computes with: a module, or a Keras layer."""

_PLAIN = frozenset({bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device})
"""Attribute types compared by value (they reference no other object)."""
_EMPTY_DICTS = frozenset({dict, OrderedDict})
#: Module attributes the walk covers itself, or that do not change what a module computes (the
#: copy runs in eval mode whatever ``training`` says; state-dict hooks act on saving/loading).
_WALKED = frozenset(
    {
        "training",
        "_parameters",
        "_buffers",
        "_modules",
        "_non_persistent_buffers_set",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
    }
)
_INTEGER_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MAX_DEPTH = 4
"""How deep containers in attributes are compared element by element; deeper, by identity."""


class ModelState:
    """What a model computed with at one moment: its structure and a digest of each tensor.

    Caches store the state they were built against and are current while :func:`model_state`
    returns that same object (compare with ``is``).
    """

    __slots__ = ("__weakref__", "_digests", "_snapshots", "_spans", "structure")

    def __init__(self, structure: tuple, tensors: Sequence[Tensor]) -> None:
        self.structure = structure
        self._spans = tuple(map(_dense_span, tensors))
        self._digests = tuple(None if span is None else _digest(*span) for span in self._spans)
        # A tensor whose bytes cannot be read in place (not a dense CPU tensor) keeps a copy.
        self._snapshots = tuple(
            None if span is not None else t.detach().clone()
            for t, span in zip(tensors, self._spans, strict=True)
        )

    def matches(self, structure: tuple, tensors: Sequence[Tensor]) -> bool:
        """Whether ``structure`` and every tensor's contents equal what was recorded.

        The structure holds each tensor's identity, dtype and shape; a tensor still dense at
        the same address then holds the same values exactly when its bytes have the digest
        recorded (a moved or no longer dense tensor counts as changed).
        """
        if structure != self.structure or len(tensors) != len(self._spans):
            return False
        for span, digest, snapshot, current in zip(
            self._spans, self._digests, self._snapshots, tensors, strict=True
        ):
            if span is None:
                if not _identical(snapshot, current):
                    return False
            elif (
                current.data_ptr() != span[0]
                or not current.is_contiguous()
                or _digest(*span) != digest
            ):
                return False
        return True


def _as_bits(t: Tensor) -> Tensor:
    """``t`` viewed as integers of the same size (floats and complex), so that NaN == NaN."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.is_floating_point() and t.element_size() in _INTEGER_VIEWS:
        return t.view(_INTEGER_VIEWS[t.element_size()])
    return t


def _dense_span(t: Tensor) -> tuple[int, int] | None:
    """(address, byte count) of a dense CPU tensor whose bytes are its values; None for others.

    Conjugate and negative views, quantized and sparse tensors hold bytes that are not their
    values: they are compared through a snapshot instead.
    """
    dense = (
        t.is_cpu
        and t.layout == torch.strided
        and not (t.is_quantized or t.is_conj() or t.is_neg())
        and t.is_contiguous()
    )
    return (t.data_ptr(), t.nbytes) if dense else None


def _digest(address: int, size: int) -> int:
    """The 128-bit XXH3 digest of ``size`` bytes at ``address``, read in place."""
    if size == 0:
        return 0
    return xxhash.xxh3_128_intdigest((ctypes.c_char * size).from_address(address))


def _identical(snapshot: Tensor, current: Tensor) -> bool:
    """Bit-for-bit equality with ``torch.equal`` on integer views (for tensors not digested)."""
    try:
        return torch.equal(_as_bits(snapshot), _as_bits(current.detach()))
    except (RuntimeError, TypeError):  # a layout equality is not defined for: treat as changed
        return False


def _signature(value: object, tensors: list[Tensor], depth: int = 0) -> object:
    """A comparable stand-in for an attribute value; tensors found are added to ``tensors``."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, Tensor):
        tensors.append(value)
        return (Tensor, id(value), value.dtype, value.device, value.shape)
    if depth < _MAX_DEPTH:
        if isinstance(value, tuple | list):
            return (kind, tuple(_signature(v, tensors, depth + 1) for v in value))
        if isinstance(value, dict):
            return (
                kind,
                tuple(
                    (_signature(k, tensors, depth + 1), _signature(v, tensors, depth + 1))
                    for k, v in value.items()
                ),
            )
        if isinstance(value, set | frozenset):
            return (kind, frozenset(_signature(v, tensors, depth + 1) for v in value))
    return (kind, id(value))


def _node_signature(name: str, node: object, tensors: list[Tensor]) -> tuple:
    """Name, type, identity and computation-relevant attributes of one module (or layer)."""
    attributes = []
    for key, value in getattr(node, "__dict__", {}).items():
        kind = type(value)
        if key in _WALKED:
            continue
        if kind in _PLAIN or (kind is tuple and all(type(v) in _PLAIN for v in value)):
            attributes.append((key, value))  # fast paths: eps, kernel_size, ...
        elif kind in _EMPTY_DICTS and not value:  # and most hook dictionaries
            attributes.append((key, kind))
        else:
            attributes.append((key, _signature(value, tensors)))
    if isinstance(node, nn.Module):
        for group in (node._parameters, node._buffers):
            for key, t in group.items():
                if t is not None:
                    tensors.append(t)
                    attributes.append((key, id(t), t.dtype, t.device, t.shape))
                else:
                    attributes.append((key, None))
    return (name, type(node), id(node), tuple(attributes))


def describe(nodes: Iterable[Node], tensors: Iterable[Tensor] = ()) -> tuple[tuple, list[Tensor]]:
    """The structure of a model given as its named nodes, and every tensor it computes with.

    Parameters
    ----------
    nodes : iterable of (name, object)
        Modules (their parameters and buffers are included) or other objects with attributes.
    tensors : iterable of Tensor
        Tensors held outside the nodes' attributes (a Keras model's variables).
    """
    found: list[Tensor] = []
    structure = tuple(_node_signature(name, node, found) for name, node in nodes)
    extra = tuple(_signature(t, found) for t in tensors)
    unique = list({id(t): t for t in found}.values())  # a shared tensor is compared once
    return (structure, extra), unique


_STATES: weakref.WeakKeyDictionary[object, ModelState] = weakref.WeakKeyDictionary()


_CALL_STATES: contextvars.ContextVar[dict[int, ModelState] | None] = contextvars.ContextVar(
    "salience_call_states", default=None
)
"""Inside :func:`one_state_per_call`: the state each model was found in by this call."""


@contextmanager
def one_state_per_call() -> Iterator[None]:
    """Check each model's state once for the whole block (one explanation), not at every pass.

    An explanation is of the model as it was when the call began: the first check inside the
    block holds for the rest of it, in this thread (or task). Blocks nest; the outermost counts.
    """
    if _CALL_STATES.get() is not None:
        yield
        return
    token = _CALL_STATES.set({})
    try:
        yield
    finally:
        _CALL_STATES.reset(token)


def current_state(key: object, nodes: Iterable[Node], tensors: Iterable[Tensor] = ()) -> ModelState:
    """The recorded state of ``key``'s model if nothing changed since, else a new one.

    Parameters
    ----------
    key : object
        What the state is recorded for (weakly: the user's model).
    nodes, tensors
        As for :func:`describe`.
    """
    seen = _CALL_STATES.get()
    recorded = _STATES.get(key)
    if seen is not None and recorded is not None and seen.get(id(key)) is recorded:
        return recorded
    structure, found = describe(nodes, tensors)
    if recorded is None or not recorded.matches(structure, found):
        recorded = _STATES[key] = ModelState(structure, found)
    if seen is not None:
        seen[id(key)] = recorded
    return recorded


def model_state(model: nn.Module) -> ModelState:
    """The state of a torch model: the same object as long as the model is unchanged."""
    return current_state(model, model.named_modules(remove_duplicate=False))


def cached_for(
    caches: weakref.WeakKeyDictionary, model: object, state: ModelState
) -> dict[Hashable, object]:
    """``model``'s entries of ``caches`` for ``state``: all entries are dropped when it changed."""
    entry = caches.get(model)
    if entry is None or entry[0] is not state:
        entry = caches[model] = (state, {})
    return entry[1]


def _foldable_pairs(model: nn.Module, sample: Tensor) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) pairs where the norm consumes exactly the conv's output."""
    produced_by: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    handles = []

    def remember_conv(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            produced_by[id(output)] = name

        return hook

    def match_norm(name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            conv = produced_by.get(id(inputs[0]))
            if conv is not None:
                pairs.append((conv, name))

        return hook

    try:
        for name, module in model.named_modules():
            if isinstance(module, _CONVS):
                handles.append(module.register_forward_hook(remember_conv(name)))
            elif isinstance(module, _NORMS) and module.track_running_stats:
                handles.append(module.register_forward_pre_hook(match_norm(name)))
        with torch.inference_mode():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    counts: dict[str, int] = {}
    for conv, norm in pairs:
        counts[conv] = counts.get(conv, 0) + 1
        counts[norm] = counts.get(norm, 0) + 1
    return [(c, n) for c, n in dict.fromkeys(pairs) if counts[c] == 1 and counts[n] == 1]


def _fold(conv: nn.Module, norm: nn.Module) -> None:
    scale = norm.weight.detach() if norm.affine else torch.ones_like(norm.running_var)
    shift = norm.bias.detach() if norm.affine else torch.zeros_like(norm.running_mean)
    factor = scale / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(norm.running_mean)
    shape = (-1,) + (1,) * (conv.weight.ndim - 1)
    conv.weight = nn.Parameter(conv.weight.detach() * factor.reshape(shape), requires_grad=False)
    conv.bias = nn.Parameter((bias - norm.running_mean) * factor + shift, requires_grad=False)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def build_inference_copy(model: nn.Module, sample: Tensor, *, fold: bool = True) -> nn.Module:
    """A frozen eval-mode deep copy of ``model``, with BatchNorm folded where that is exact.

    Parameters
    ----------
    model : nn.Module
        The user's model; it is not modified.
    sample : Tensor
        A batch of real inputs, used to find conv→BatchNorm pairs and to verify the copy.
    fold : bool
        Fold BatchNorm into the preceding convolution.
    """
    return _build(model, sample, fold=fold)[0]


def _build(model: nn.Module, sample: Tensor, *, fold: bool) -> tuple[nn.Module, bool]:
    """The copy, and whether the choice made is final (False: the probe's outputs were not
    finite, so whether folding is exact could not be verified; the unfolded copy is given)."""
    try:
        plain = copy.deepcopy(model)
    except Exception as error:
        raise CopyError(str(error)) from error
    plain.eval()
    for parameter in plain.parameters():
        parameter.requires_grad_(False)
    if not fold:
        return plain, True
    probe = sample[:2].detach()
    folded = copy.deepcopy(plain)
    pairs = _foldable_pairs(folded, probe)
    if not pairs:
        return plain, True
    for conv_name, norm_name in pairs:
        _fold(folded.get_submodule(conv_name), folded.get_submodule(norm_name))
        _replace(folded, norm_name, nn.Identity())
    with torch.inference_mode():
        reference = plain(probe)
        candidate = folded(probe)
    if not all_finite(reference):
        return plain, False
    if outputs_equal(reference, candidate):
        # A folded convolution outputs what its norm did: remember which, for layer captures.
        setattr(folded, _FOLDED_ATTRIBUTE, frozenset(conv for conv, _ in pairs))
        return folded, True
    warnings.warn(
        "folding BatchNorm changed this model's outputs; using an unfolded copy",
        RuntimeWarning,
        stacklevel=4,
    )
    return plain, True


def all_finite(outputs: object) -> bool:
    """Whether every tensor in ``outputs`` (a tensor, or tuples, lists, dicts of them) is finite."""
    if isinstance(outputs, Tensor):
        return not outputs.is_floating_point() or bool(torch.isfinite(outputs).all())
    if isinstance(outputs, tuple | list):
        return all(map(all_finite, outputs))
    if isinstance(outputs, dict):
        return all(map(all_finite, outputs.values()))
    return True


def outputs_equal(a: object, b: object) -> bool:
    """Same structure and shapes; values equal to ``EQUALITY_TOLERANCE`` × the largest one."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape:
            return False
        scale = float(a.abs().max()) if a.numel() else 0.0
        return bool(((a - b).abs().max() <= EQUALITY_TOLERANCE * max(1.0, scale)).item())
    if isinstance(a, tuple | list) and isinstance(b, tuple | list) and len(a) == len(b):
        return all(outputs_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(outputs_equal(a[k], b[k]) for k in a)
    return False


def folded_convolutions(copy: nn.Module) -> frozenset[str]:
    """Names of the convolutions of an inference copy that have a BatchNorm folded into them."""
    return getattr(copy, _FOLDED_ATTRIBUTE, frozenset())


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[ModelState, dict]] = weakref.WeakKeyDictionary()


def _planar_channels_last(module: nn.Module) -> None:
    """Store the 4-D parameters and buffers of ``module`` (2-D convolutions) channels-last.

    ``Module.to(memory_format=torch.channels_last)`` refuses the 5-D weights of a ``Conv3d``;
    those, and every tensor of another rank, stay contiguous (the values never change).
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.ndim == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)


def cached_inference_copy(
    model: nn.Module,
    sample: Tensor,
    *,
    fold: bool = True,
    channels_last: bool = False,
    state: ModelState | None = None,
) -> nn.Module | None:
    """The inference copy of ``model`` for these options, built once per state of the model.

    The cache is keyed weakly by the user's model (the copy holds no reference to it), so a model
    that is dropped takes its copy with it; any change of the model (:func:`model_state`)
    triggers a rebuild. Callers serialize access per model.

    Parameters
    ----------
    model : nn.Module
        The user's model.
    sample : Tensor
        A batch of real inputs (see :func:`build_inference_copy`).
    fold, channels_last : bool
        Fold BatchNorm; run in channels-last memory format.
    state : ModelState, optional
        ``model_state(model)``, when the caller has just taken it.

    Returns
    -------
    nn.Module or None
        The copy; None when an earlier attempt found that this model cannot be copied.

    Raises
    ------
    CopyError
        The first time a model turns out not to be copyable (later calls return None).
    """
    entries = cached_for(_CACHE, model, state or model_state(model))
    options = (fold, channels_last)
    if options in entries:
        return entries[options]
    try:
        built, final = _build(model, sample, fold=fold)
    except CopyError:
        entries[options] = None
        raise
    if channels_last:
        _planar_channels_last(built)
    if final:
        entries[options] = built
    return built
