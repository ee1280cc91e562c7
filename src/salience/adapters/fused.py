"""A safely captured, fused, forward-only version of the inference copy, for long runs of passes.

Perturbation methods (occlusion, RISE, Score-CAM, Ablation-CAM, deletion/insertion) run hundreds
to thousands of forward passes of the same model on same-sized inputs. Such runs use a captured
program, on by default for every model:

1. ``torch.export`` captures the inference copy for one input shape. Export runs ``forward`` on
   fake tensors, which hold no values: Python control flow that depends on tensor values
   (``if x.sum() > 0:``, ``.item()``, ``.tolist()``) raises, so a model that captures computes
   the same graph for every input of that shape and nothing can silently follow the wrong
   branch. Non-strict export is used: it refuses the same value-dependent code as strict
   (Dynamo) export at about half its cost (``bench/capture.py``). Python logic on sizes (a
   "same" padding computed from the input's height) is resolved for that shape, which is why
   programs are cached per input shape.
2. The exported graph, straight-line aten code, is traced into TorchScript, frozen, and run with
   oneDNN fusion (each convolution merged with the element-wise operations after it): about
   1.6× faster than the eager copy on CPU (``bench/capture.py``).

The program is verified against the eager copy on a real batch (outputs equal to 1e-4 of their
largest value; a batch with non-finite outputs decides nothing) and cached per state of the
user's model (:func:`~salience.adapters.inference_copy.model_state`: rebuilt after any change
of weights, modules or attributes) and per input shape, and kept on disk for later processes
(:mod:`salience.adapters.program_store`: authenticated entries, checked against the eager copy
again when read). A model that cannot be captured runs the
eager copy; the reason is recorded (:func:`recording_execution`) and reported in the
explanation's info. oneDNN fusion is a process-wide switch of TorchScript; it is turned on only
while a captured program runs, and restored afterwards.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from salience.adapters import program_store
from salience.adapters.inference_copy import (
    EQUALITY_TOLERANCE,
    ModelState,
    all_finite,
    cached_for,
    model_state,
    outputs_equal,
)

WARM_UP_CALLS = 3
"""TorchScript's profiling executor optimizes a graph after it has seen an input shape twice."""
CAPTURED = "captured (torch.export, frozen TorchScript, oneDNN fusion)"
"""What :attr:`Capture.note` says of a captured program."""
_REASON_LENGTH = 160

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[ModelState, dict]] = weakref.WeakKeyDictionary()
_NAMES: weakref.WeakKeyDictionary[nn.Module, tuple[ModelState, dict]] = weakref.WeakKeyDictionary()
"""Per model state: the program store's name of each capture (a digest of the weights)."""
_EXPORT_LOGGER = "torch.fx.experimental.symbolic_shapes"
"""Where export logs the code a refused model branches on (the reason goes to info instead)."""
_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "salience_execution_notes", default=None
)


@dataclass(frozen=True)
class Capture:
    """The verdict on one model state and input shape: the program, or why there is none."""

    program: torch.jit.ScriptModule | None
    #: :data:`CAPTURED`, or ``"eager: <reason>"``.
    note: str


@contextmanager
def onednn_fusion() -> Iterator[None]:
    """Turn TorchScript's oneDNN fusion on for the block; restore the previous setting."""
    previous = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(previous)


def _quiet(_record: logging.LogRecord) -> bool:
    return False


class _SilencedThreads:
    """A stand-in for ``sys.stderr`` that drops what the silenced threads write."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.threads: set[int] = set()

    def write(self, text: str) -> int:
        if threading.get_ident() in self.threads:
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


_STDERR_LOCK = threading.Lock()


@contextmanager
def _export_log_silenced() -> Iterator[None]:
    """Drop export's log records, and the partial graph it prints when it refuses a model, in
    this thread for the block: a refusal is reported in the explanation's info instead."""
    logger = logging.getLogger(_EXPORT_LOGGER)
    logger.addFilter(_quiet)
    with _STDERR_LOCK:
        proxy = sys.stderr
        if not isinstance(proxy, _SilencedThreads):
            proxy = sys.stderr = _SilencedThreads(sys.stderr)
        proxy.threads.add(threading.get_ident())
    try:
        yield
    finally:
        with _STDERR_LOCK:
            proxy.threads.discard(threading.get_ident())
            if not proxy.threads and sys.stderr is proxy:
                sys.stderr = proxy.stream
        logger.removeFilter(_quiet)


@contextmanager
def recording_execution() -> Iterator[list[str]]:
    """Collect, in this thread (or task), how each long run of passes ran inside the block.

    The list holds one note per distinct verdict (:attr:`Capture.note`, or another adapter's
    note); blocks nest, and the outermost collects.
    """
    notes = _NOTES.get()
    if notes is not None:
        yield notes
        return
    notes = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def record_execution(note: str) -> None:
    """Add ``note`` to the notes being recorded (nothing happens outside a recording block)."""
    notes = _NOTES.get()
    if notes is not None and note not in notes:
        notes.append(note)


def _reason(prefix: str, error: BaseException) -> str:
    """``eager: prefix (first line of the error)``, short enough for an explanation's info."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[0] if lines else type(error).__name__
    if len(detail) > _REASON_LENGTH:
        detail = detail[: _REASON_LENGTH - 1] + "…"
    return f"eager: {prefix} ({type(error).__name__}: {detail})"


def _value_dependent(error: BaseException) -> bool:
    """Whether export refused ``forward`` for Python logic on tensor values."""
    return "data-dependent" in str(error).lower() or "DataDependent" in type(error).__name__


def build_fused(copy: nn.Module, sample: Tensor) -> Capture | None:
    """The captured, frozen, fused ``copy`` for inputs shaped like ``sample``.

    Parameters
    ----------
    copy : nn.Module
        The eager inference copy (eval mode, frozen).
    sample : Tensor
        A batch of real inputs in the layout the copy runs with.

    Returns
    -------
    Capture or None
        The verdict (a program, or the reason there is none); None when ``sample`` gives
        non-finite outputs, which prove nothing.
    """
    with warnings.catch_warnings(), _export_log_silenced():
        # torch.jit's deprecation notice, and tracer warnings about the exported graph's own
        # shape checks: export has proven the graph free of value-dependent control flow.
        warnings.simplefilter("ignore")
        try:
            exported = torch.export.export(copy, (sample,), strict=False)
        except Exception as error:  # any refusal of export means: run the eager copy
            prefix = (
                "its forward branches on tensor values, so no one captured graph holds for "
                "every input"
                if _value_dependent(error)
                else "torch.export cannot capture this model"
            )
            return Capture(None, _reason(prefix, error))
        try:
            with torch.no_grad():
                traced = torch.jit.trace(exported.module(), sample, check_trace=False)
                program = torch.jit.freeze(traced.eval())
        except Exception as error:
            return Capture(None, _reason("the exported program cannot be frozen", error))
    return verified(copy, program, sample)


def verified(copy: nn.Module, program: torch.jit.ScriptModule, sample: Tensor) -> Capture | None:
    """``program`` warmed up on ``sample``, if its outputs equal the eager ``copy``'s.

    Returns
    -------
    Capture or None
        The program, or why it is refused; None when ``sample`` gives non-finite outputs.
    """
    with torch.inference_mode(), onednn_fusion():
        reference = copy(sample)
        for _ in range(WARM_UP_CALLS):
            candidate = program(sample)
    if not all_finite(reference):
        return None
    if not outputs_equal(reference, candidate):
        return Capture(
            None,
            f"eager: the captured program's outputs differ from the model's by more than "
            f"{EQUALITY_TOLERANCE:g} of their largest value",
        )
    return Capture(program, CAPTURED)


def cached_capture(
    model: nn.Module,
    options: tuple,
    copy: nn.Module,
    sample: Tensor,
    state: ModelState | None = None,
) -> Capture | None:
    """The verdict for ``copy`` on inputs shaped like ``sample``, built once per state of the
    user's ``model`` (``state``, by default :func:`model_state`) and per input shape.

    A batch smaller than one already captured for the same sample shape (the last chunk of a
    run) gets None: it runs eager rather than pay for a capture of its own. None also when the
    outputs of ``sample`` are not finite (nothing is cached then).
    """
    state = state or model_state(model)
    by_batch = cached_for(_CACHE, model, state).setdefault(_shape_key(options, sample), {})
    batch = sample.shape[0]
    if batch in by_batch:
        return by_batch[batch]
    if any(size > batch and verdict.program is not None for size, verdict in by_batch.items()):
        return None
    name = _stored_name(model, state, copy, sample, options)
    stored = None if name is None else program_store.read(name)
    if stored is not None:  # checked as a fresh capture is; one that fails is captured afresh
        verdict = verified(copy, stored, sample)
        if verdict is None or verdict.program is not None:
            if verdict is not None:
                by_batch[batch] = verdict
            return verdict
    verdict = build_fused(copy, sample)
    if verdict is not None:
        by_batch[batch] = verdict
        if verdict.program is not None and name is not None:
            program_store.write(name, verdict.program)
    return verdict


def _shape_key(options: tuple, sample: Tensor) -> tuple:
    """What programs of one model state are cached by, besides the batch size."""
    return (*options, tuple(sample.shape[1:]), sample.dtype)


def _stored_name(
    model: nn.Module, state: ModelState, copy: nn.Module, sample: Tensor, options: tuple
) -> str | None:
    """The program store's name for this capture, computed once per model state and shape;
    None when the store is off (the weights are then not hashed at all)."""
    if program_store.store_directory() is None:
        return None
    names = cached_for(_NAMES, model, state)
    key = (*_shape_key(options, sample), sample.shape[0])
    if key not in names:
        names[key] = program_store.fingerprint(copy, sample, options)
    return names[key]


def has_program(
    model: nn.Module,
    options: tuple,
    copy: nn.Module,
    sample: Tensor,
    state: ModelState | None = None,
) -> bool:
    """Whether a program for inputs like ``sample`` is built already: in memory for this state
    of ``model``, or in the program store (:mod:`salience.adapters.program_store`)."""
    state = state or model_state(model)
    verdict = cached_for(_CACHE, model, state).get(_shape_key(options, sample), {})
    verdict = verdict.get(sample.shape[0])
    if verdict is not None:
        return verdict.program is not None
    name = _stored_name(model, state, copy, sample, options)
    return name is not None and program_store.contains(name)


def cached_fused(
    model: nn.Module,
    options: tuple,
    copy: nn.Module,
    sample: Tensor,
    state: ModelState | None = None,
) -> torch.jit.ScriptModule | None:
    """The program of :func:`cached_capture`, or None when there is none."""
    verdict = cached_capture(model, options, copy, sample, state)
    return None if verdict is None else verdict.program


def run_fused(fused: torch.jit.ScriptModule, x: Tensor) -> Tensor:
    """The captured program's outputs for ``x``, without gradients."""
    with torch.inference_mode(), onednn_fusion():
        return fused(x)
