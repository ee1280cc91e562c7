"""The perturbation engine: masks → masked inputs → scores, in chunks, without gradients.

Shared by every method that explains by masking the input (occlusion, RISE, Score-CAM). Masks are
made chunk by chunk by the caller's function, so memory is bounded by the chunk size whatever the
number of masks; each chunk runs through the adapter's ``forward`` (inference mode, the private
inference copy for torch models, any black box otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from salience.errors import SalienceError
from salience.methods.sampling import map_in_chunks
from salience.targets import Selection, target_scores

MaskFn = Callable[[slice], Tensor]
"""Rows ``start:stop`` of the masks → masks ``(B, 1 or C, H, W)`` in [0, 1] (1 keeps the input)."""


def weight_kind(outputs: Tensor, selection: Selection, score: str, softmax: bool) -> str:
    """The score that weighs masks: the softmax probability for a classifier's class targets
    when ``softmax`` (as Score-CAM and RISE define it), else the explained ``score`` (σ(logit)
    for the probability of a binary or multi-label output)."""
    classifier = outputs.ndim == 2 and outputs.shape[1] >= 2 and score not in ("sigmoid", "value")
    if softmax and classifier and selection.indices is not None:
        return "probability"
    return score


BULK_PASSES = 256
"""From this many masked inputs on, a run asks for the captured program: on EfficientNet-Lite0 at
224×224 its capture (export, freezing, warm-up) costs what about 125 eager passes cost, and it
saves half of every pass after (``bench/capture.py``), so a first run of 256 passes gains."""


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
        Whether many passes follow (the adapter may run a fused copy); None: from ``count``.
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

    bulk = count >= BULK_PASSES if bulk is None else bulk

    def scores(rows: slice) -> Tensor:
        chosen = masks(rows).to(x)
        inputs = x * chosen if substrate is None else substrate + (x - substrate) * chosen
        try:
            outputs = adapter.forward(inputs, bulk=bulk)
        except (MemoryError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
                raise
            size = rows.stop - rows.start
            raise ChunkMemoryError(
                f"a chunk of {size} perturbed inputs of shape {tuple(x.shape[1:])} does not fit "
                f"in memory; pass a smaller chunk_size (e.g. {max(1, size // 4)})"
            ) from error
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
