"""The perturbation engine: masks → masked inputs → scores, in chunks, without gradients.

Shared by every method that explains by masking the input (occlusion, RISE, Score-CAM). Masks are
made chunk by chunk by the caller's function, so memory is bounded by the chunk size whatever the
number of masks; each chunk runs through the adapter's ``forward`` (inference mode, the private
inference copy for torch models, any black box otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from salience.adapters.fused import record_execution
from salience.errors import SalienceError
from salience.methods.sampling import map_in_chunks
from salience.outputs import MULTILABEL, REGRESSION, SIGMOID, SOFTMAX
from salience.targets import Selection, target_scores

MaskFn = Callable[[slice], Tensor]
"""Rows ``start:stop`` of the masks → masks ``(B, 1 or C, H, W)`` in [0, 1] (1 keeps the input)."""


def weight_kind(
    outputs: Tensor, selection: Selection, score: str, softmax: bool, output_kind: str | None
) -> str:
    """The score that weighs masks, as Score-CAM and RISE define it when ``softmax``: the
    target's probability, a softmax across classes (``"probability"``) for class logits and
    σ of its logit (``"sigmoid"``) for a binary or multi-label output; else, or for a
    regression or a callable target, the explained ``score`` itself.

    ``output_kind`` says how the outputs read (:mod:`salience.outputs`); None: classes for
    two or more outputs, as :func:`~salience.outputs.detect_output_kind` reads them.
    """
    if not softmax or selection.indices is None or score == "value":
        return score
    count = outputs.shape[1] if outputs.ndim == 2 else 1
    kind = output_kind or (SOFTMAX if count >= 2 else REGRESSION)
    if kind in (SIGMOID, MULTILABEL):
        return "sigmoid"
    if kind == SOFTMAX and count >= 2 and score != "sigmoid":
        return "probability"
    return score


BULK_PASSES = 256
"""From this many masked inputs on, a run asks for the captured program: on EfficientNet-Lite0 at
224×224 its capture (export, freezing, warm-up) costs what about 125 eager passes cost, and it
saves half of every pass after (``bench/capture.py``), so a first run of 256 passes gains."""


CAPTURE_WORTH_SECONDS = 3.0
"""A run of at least :data:`BULK_PASSES` asks for a new captured program only when its second
chunk, run eagerly, says the whole run would take this long: a capture costs a few seconds
(importing torch's export machinery, exporting, tracing, then warm-up passes), which a small
model's run of cheap passes never earns back (a digits CNN's 729 occlusion passes take under a
second eagerly). The program is kept on disk (:mod:`salience.adapters.program_store`), so the
cost is paid once per model, input shape and machine, and every later run of the kind saves
about 40% of its passes' time: a run of 3 s gains from the second on. A program already built
(in memory or on disk) is used from the first chunk of any run of ``BULK_PASSES`` or more."""


def worth_capturing(first_chunk_seconds: float, chunk: int, count: int) -> bool:
    """Whether a run of ``count`` passes, whose first ``chunk`` took ``first_chunk_seconds``
    eagerly, is long enough to pay for a capture (:data:`CAPTURE_WORTH_SECONDS`)."""
    return first_chunk_seconds * count / max(chunk, 1) >= CAPTURE_WORTH_SECONDS


class ChunkMemoryError(SalienceError, MemoryError):
    """A chunk of perturbed inputs does not fit in memory."""


def masked_scores(
    adapter: object,
    x: Tensor,
    masks: MaskFn,
    count: int,
    selection: Selection,
    kind: str,
    *,
    substrate: Tensor | None = None,
    chunk_size: int,
    progress: bool = False,
    description: str = "",
    bulk: bool | None = None,
    run_passes: int | None = None,
) -> Tensor:
    """Scores of one sample under ``count`` masks: ``x · m + substrate · (1 − m)``.

    Parameters
    ----------
    adapter : adapter
        Anything with ``forward(x, chunk_size=...)`` returning the model's outputs.
    x : Tensor
        One sample, ``(1, C, H, W)``.
    masks : callable
        ``masks(rows)`` gives the masks of rows ``rows`` of ``range(count)``.
    count : int
        The number of masks.
    selection : Selection
        The sample's target (one row).
    kind : str
        ``"logit"`` or ``"probability"``.
    substrate : Tensor, optional
        What masked-out pixels become, broadcastable to ``x``; zeros when None.
    chunk_size : int
        Masked inputs per forward pass; does not change the result.
    progress : bool
        Show a progress bar.
    description : str
        The progress bar's label.
    bulk : bool, optional
        Whether many passes follow (the adapter may run a captured program); None: when
        ``count`` is at least :data:`BULK_PASSES` and either the adapter has a program built
        already (``has_program``) or the second chunk's time says the run is long enough to
        pay for a capture (:func:`worth_capturing`).
    run_passes : int, optional
        The passes of the whole run this call is part of (a caller scoring several samples one
        after another), which decide ``bulk=None``; default ``count``.
        Callers that score several samples one after another pass True for the whole run.

    Returns
    -------
    Tensor
        ``(count, K)`` scores.

    Raises
    ------
    ChunkMemoryError
        When the first chunk does not fit in memory; the message gives a chunk size to try.
    """

    # None: decided after the second chunk, run eagerly and timed (worth_capturing); the first
    # may include one-off work (the private inference copy)
    passes = count if run_passes is None else run_passes
    long_run: bool | None = bulk if bulk is not None else (None if passes >= BULK_PASSES else False)
    chunks_run = 0

    difference = None if substrate is None else x - substrate

    def scores(rows: slice) -> Tensor:
        nonlocal long_run, chunks_run
        chosen = masks(rows).to(x)
        inputs = x * chosen if substrate is None else torch.addcmul(substrate, difference, chosen)
        if long_run is None and chunks_run == 0 and getattr(adapter, "has_program", None):
            long_run = adapter.has_program(inputs) or None  # built already: nothing to pay
        started = time.perf_counter()
        try:
            outputs = adapter.forward(inputs, bulk=bool(long_run))
        except (MemoryError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
                raise
            size = rows.stop - rows.start
            raise ChunkMemoryError(
                f"a chunk of {size} perturbed inputs of shape {tuple(x.shape[1:])} does not fit "
                f"in memory; pass a smaller chunk_size (e.g. {max(1, size // 4)})"
            ) from error
        chunks_run += 1
        if long_run is None and chunks_run == 2:
            seconds = time.perf_counter() - started
            long_run = worth_capturing(seconds, inputs.shape[0], passes)
            if not long_run:
                record_execution(
                    f"eager: the {passes} passes take about "
                    f"{seconds * passes / inputs.shape[0]:.1f} s, less than a capture would save"
                )
        return target_scores(outputs, selection.repeat(inputs.shape[0]), kind)

    # One result tensor up front: small per-chunk tensors kept between the large mask buffers
    # fragmented the heap and made memory grow with the number of masks (bench/perturbation.py).
    result = torch.zeros((count, selection.k), dtype=x.dtype, device=x.device)
    # An adapter may set the stage for a long run (onnxruntime: torch keeps one thread).
    with getattr(adapter, "long_run", nullcontext)():
        for rows, values in map_in_chunks(
            count, scores, chunk_size, progress=progress, description=description
        ):
            result[rows] = values
    return result
