"""A fused, forward-only version of the inference copy, for long runs of forward passes.

Perturbation methods (occlusion, RISE, Score-CAM) run hundreds to thousands of forward passes of
the same model on same-sized inputs. Tracing the inference copy with TorchScript, freezing it and
letting oneDNN fuse each convolution with the element-wise operations that follow it (the
ReLU6 of EfficientNet-Lite, additions, ...) runs the same arithmetic about 1.5× faster on CPU
(bench/perturbation.py). The fused copy is verified against the eager copy on a real batch
(outputs equal to 1e-4 of their largest value; a batch with non-finite outputs decides nothing)
and rebuilt whenever the user's model changes
(:func:`~salience.adapters.inference_copy.model_state`).

Tracing records one path through ``forward``: a model whose ``forward`` branches on tensor
values would be traced wrongly, so fusion is opt-in (``TorchAdapter(fuse=True)``) and a trace
that draws any tracer warning is not used, unless whoever opened the model knows that its only
Python logic depends on the input's size, not its values (``trusted_trace=True``: the bundled
models, whose "same" padding is computed from the input's size; the fused copy is cached per
input size). oneDNN fusion is a process-wide switch of TorchScript;
it is turned on only while a fused copy runs, and restored afterwards.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from salience.adapters.inference_copy import (
    ModelState,
    all_finite,
    cached_for,
    model_state,
    outputs_equal,
)

WARM_UP_CALLS = 3
"""TorchScript's profiling executor optimizes a graph after it has seen an input shape twice."""

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[ModelState, dict]] = weakref.WeakKeyDictionary()
_UNDECIDED = object()
"""What :func:`build_fused` returns when the reference outputs are not finite: no verdict."""


@contextmanager
def onednn_fusion() -> Iterator[None]:
    """Turn TorchScript's oneDNN fusion on for the block; restore the previous setting."""
    previous = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(previous)


def build_fused(
    copy: nn.Module, sample: Tensor, *, trusted_trace: bool = False
) -> torch.jit.ScriptModule | None:
    """The traced, frozen, fused ``copy``, or None when it cannot be traced cleanly or exactly.

    Parameters
    ----------
    copy : nn.Module
        The eager inference copy (eval mode, frozen).
    sample : Tensor
        A batch of real inputs in the layout the copy runs with.
    trusted_trace : bool
        The model's Python logic depends on input sizes only: tracer warnings do not stop it.
    """
    fused = _verified_fused(copy, sample, trusted_trace)
    return None if fused is _UNDECIDED else fused


def _verified_fused(copy: nn.Module, sample: Tensor, trusted_trace: bool) -> object:
    """:func:`build_fused`, or ``_UNDECIDED`` when ``sample`` gives non-finite outputs."""
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            traced = torch.jit.trace(copy, sample, check_trace=False)
            fused = torch.jit.freeze(traced.eval())
    except Exception:  # any tracing failure means: run the eager copy
        return None
    if not trusted_trace and any(_unsafe(warning) for warning in caught):
        return None
    with torch.inference_mode(), onednn_fusion():
        reference = copy(sample)
        for _ in range(WARM_UP_CALLS):
            candidate = fused(sample)
    if not all_finite(reference):
        return _UNDECIDED
    return fused if outputs_equal(reference, candidate) else None


def _unsafe(warning: warnings.WarningMessage) -> bool:
    """A tracer warning: the trace may not hold for all inputs."""
    return issubclass(warning.category, torch.jit.TracerWarning)


def cached_fused(
    model: nn.Module,
    options: tuple,
    copy: nn.Module,
    sample: Tensor,
    state: ModelState | None = None,
    *,
    trusted_trace: bool = False,
) -> torch.jit.ScriptModule | None:
    """The fused ``copy`` for inputs shaped like ``sample``: built once per state of the user's
    ``model`` (``state``, by default :func:`model_state`) and per input shape (batch size aside);
    None when it cannot be used. ``trusted_trace`` as for :func:`build_fused`."""
    entries = cached_for(_CACHE, model, state or model_state(model))
    key = (*options, trusted_trace, tuple(sample.shape[1:]), sample.dtype)
    if key in entries:
        return entries[key]
    fused = _verified_fused(copy, sample, trusted_trace)
    if fused is _UNDECIDED:
        return None
    entries[key] = fused
    return fused


def run_fused(fused: torch.jit.ScriptModule, x: Tensor) -> Tensor:
    """The fused copy's outputs for ``x``, without gradients."""
    with torch.inference_mode(), onednn_fusion():
        return fused(x)
