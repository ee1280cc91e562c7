"""Time occlusion and RISE against plain-torch lower bounds and Captum; check their maps; memory.

For EfficientNet-Lite0 on one 1×3×224×224 photo (``skimage.data.chelsea``), the predicted class,
on CPU, measured interleaved (A B C … then … C B A) with medians of same-round ratios. salience
runs with its default adapter (``salience.Occlusion(model, ...)``) and, where ``TorchAdapter``
has a ``fuse`` option, also with the other setting (``TorchAdapter(model, fuse=...)``). Parts
(``--parts``; default ``occlusion rise rss``, about 4 minutes on 2 idle cores):

* ``occlusion``: ``salience.Occlusion(model, window=16, stride=8)`` (built once; zero baseline,
  the target's logit): 27 × 27 = 729 windows, one forward pass per occluded image, none skipped.
  The lower bound, in the same process, is 729 forward passes of the plain model (eval mode,
  contiguous NCHW, ``torch.no_grad()``) in chunks of 32 (the ``perturbations_per_eval`` Captum is
  commonly run with) and of 16. Its occluded images are made inside the timed loop, the
  cheapest straightforward way: the image repeated for the chunk, each window set to zero in
  place (cheaper than salience's ``baseline + (x − baseline) · mask``). Target: salience >= 2×
  faster. Captum's ``Occlusion`` on the plain model (``sliding_window_shapes=(3, 16, 16),
  strides=(3, 8, 8), baselines=0``: the same 729 windows) is timed side by side at
  ``perturbations_per_eval`` 32 and at its default 1 (``--no-captum`` leaves it out). Maps:
  salience's against Captum's (a (1, 3, 224, 224) map whose three channels are checked to be
  equal) and against the map made from the lower bound's own scores (each window's drop of the
  logit, averaged over the windows covering a pixel), as max |Δ| / max |map| (target <= 1e-4).
* ``rise``: ``salience.RISE(model, n_masks=N, grid=7, keep=0.5, seed=0)`` (built once; the
  target's softmax probability weighs the masks), N = ``--masks`` (default 1000). The lower bound
  is N forward passes of the plain model in chunks of 32 and of 16 on the same masked images,
  then the weighted average ``Σ p_i · M_i / (N · keep)`` (float64). Its masks come from
  ``RISE(...).mask_maker((224, 224), cpu)(slice(0, N))`` and are made once, before timing (the
  lower bound does not pay for making them; salience does); the masked images ``x · M`` are made
  inside the timed loop. The lower bound's map is the reference for salience's (target <= 1e-4).
* ``where``: where the time of one perturbed image goes, each step timed on 64 images in chunks
  (interleaved, ``--fast-repeats`` rounds): the plain model's forward pass (chunks of 32, 16, 8),
  the inference copy called directly (channels-last input, ``torch.inference_mode()``; chunks of
  the library's ``PERTURBATION_CHUNK_SIZE`` and of 32), ``TorchAdapter.forward`` on NCHW chunks
  as the engine calls it (and with ``fuse`` on, ``bulk=True``), the adapter's own work per call
  (``forward`` with the copy's ``forward`` stubbed to return ready outputs), occlusion's masks (a
  copy here of the mask function inside ``Occlusion.attribute``), RISE's masks (``mask_maker``),
  the masked inputs (``substrate + (x − substrate) · m``, as the engine makes them) and RISE's
  weighted sum (which makes its masks again).
* ``chunks``: seconds per perturbed image of ``Occlusion(window=16, stride=14, chunk_size=c)``
  (16 × 16 = 256 windows: enough for the engine to ask the adapter for its bulk path, where it
  has one) for c in ``--chunks`` (default 1, 4, 8, 16, 32, 64), per adapter setting, interleaved
  after a warm-up of every batch shape (twice), each against the best (paired), and the peak-RSS
  increase of one such explanation per chunk size (fresh processes, as below).
  ``PERTURBATION_CHUNK_SIZE`` in ``salience.methods.perturbation`` should be the chunk size this
  supports. About 4.5 minutes.
* ``rss``: the peak RSS of one RISE explanation as N grows (``--rss-masks``, default 1000, 2000,
  4000, 8000; chunk size fixed at ``PERTURBATION_CHUNK_SIZE``; default adapter), each in a fresh
  child process: the high-water mark is reset (``/proc/self/clear_refs``) once the model is
  loaded and has run once, then read (``VmHWM``) after the explanation. To keep the run short the
  child runs the model on the first ``--rss-real`` chunks (default 8) of perturbed images only and
  gives the later chunks the last real chunk's outputs (a ``TorchAdapter`` subclass): everything
  else runs in full for all N masks (the grids and shifts drawn up front, every chunk's masks
  made, twice — for the scores and for the weighted sum —, every masked input made, the weighted
  sum), and the model's working memory is the same for every chunk of one size. ``--rss-full``
  runs the model on every chunk (about 4.5 min for the four N on 2 cores). Each row shows what
  the N masks would take if they were all materialised at once (N × 224 × 224 float32): the peak
  must stay flat instead.

``THP_MEM_ALLOC_ENABLE=1`` is set before torch is imported (``--no-thp``: 0), as in
``bench/methods.py``. The report prints torch's thread count, the load average, how busy other
processes kept the CPUs while timing (a ``BUSY`` run should be repeated) and the THP state.

Run by hand: ``PYTHONPATH=src python bench/perturbation.py [--repeats N] [--masks N]
[--parts occlusion rise where chunks rss] [--no-captum] [--rss-full]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (below, and in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
import importlib.util
import inspect
import json
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import common
import salience
from salience.adapters.inference_copy import cached_inference_copy
from salience.adapters.torch import TorchAdapter
from salience.methods.perturbation import PERTURBATION_CHUNK_SIZE, window_starts

WINDOW, STRIDE = 16, 8
#: Stride of the chunk-size workload: 16 × 16 = 256 windows (the engine's BULK_PASSES, where it
#: has one: from that many passes on it asks the adapter for its bulk path).
CHUNK_STRIDE = 14
GRID, KEEP, SEED = 7, 0.5, 0
PLAIN_CHUNKS = (32, 16)
CAPTUM_PPE = (32, 1)
CHUNKS = (1, 4, 8, 16, 32, 64)
RSS_MASKS = (1000, 2000, 4000, 8000)
#: Images per candidate of the ``where`` part (a multiple of every chunk size there).
WHERE_IMAGES = 64
PARTS = ("occlusion", "rise", "where", "chunks", "rss")
DEFAULT_PARTS = ("occlusion", "rise", "rss")
TOLERANCE = 1e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed rounds of occlusion, RISE and their lower bounds (default 1, ~1.5 min each)",
    )
    parser.add_argument(
        "--fast-repeats",
        type=int,
        default=3,
        help="timed rounds of the 'where' and 'chunks' parts (default 3)",
    )
    parser.add_argument("--masks", type=int, default=1000, help="RISE masks timed (default 1000)")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(DEFAULT_PARTS),
        help=f"what to run (default: {' '.join(DEFAULT_PARTS)})",
    )
    parser.add_argument("--no-captum", action="store_true", help="leave Captum's Occlusion out")
    parser.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=list(CHUNKS),
        help=f"chunk sizes of the 'chunks' part (default {' '.join(map(str, CHUNKS))})",
    )
    parser.add_argument(
        "--rss-masks",
        type=int,
        nargs="+",
        default=list(RSS_MASKS),
        help=f"RISE mask counts of the 'rss' part (default {' '.join(map(str, RSS_MASKS))})",
    )
    parser.add_argument(
        "--rss-real",
        type=int,
        default=8,
        help="chunks the memory children run through the model (default 8; the rest reuse them)",
    )
    parser.add_argument(
        "--rss-full", action="store_true", help="run the model on every chunk in the memory runs"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--no-thp", action="store_true", help="run with THP_MEM_ALLOC_ENABLE=0")
    parser.add_argument(
        "--rss-child",
        nargs=5,
        metavar=("METHOD", "COUNT", "CHUNK", "REAL", "OPTIONS"),
        help=argparse.SUPPRESS,
    )
    return parser.parse_args(argv)


# -- plain-torch lower bounds and references -------------------------------------------------------


def corners(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the windows (the library's placement; here a square image)."""
    starts = window_starts(size, window, stride)
    return [(r, c) for r in starts for c in starts]


def plain_occlusion(model: nn.Module, x: Tensor, target: int, chunk: int) -> Tensor:
    """The logit of ``target`` on every occluded image (windows of 16, stride 8, zeros), plain.

    The occluded images are made here, chunk by chunk: the image repeated, each window zeroed.
    """
    where = corners(x.shape[-1], WINDOW, STRIDE)
    scores = []
    with torch.no_grad():
        for start in range(0, len(where), chunk):
            part = where[start : start + chunk]
            batch = x.repeat(len(part), 1, 1, 1)
            for i, (r, c) in enumerate(part):
                batch[i, :, r : r + WINDOW, c : c + WINDOW] = 0
            scores.append(model(batch)[:, target])
    return torch.cat(scores)


def occlusion_map(base: float, scores: Tensor, size: int) -> Tensor:
    """Each window's drop of the score, averaged over the windows that cover a pixel: (H, W)."""
    total = torch.zeros(size, size, dtype=torch.float64)
    coverage = torch.zeros(size, size, dtype=torch.float64)
    for (r, c), value in zip(corners(size, WINDOW, STRIDE), scores.double().tolist(), strict=True):
        total[r : r + WINDOW, c : c + WINDOW] += base - value
        coverage[r : r + WINDOW, c : c + WINDOW] += 1
    return total / coverage


def plain_rise(model: nn.Module, x: Tensor, target: int, masks: Tensor, chunk: int) -> Tensor:
    """RISE on the plain model with precomputed masks ``(N, 1, H, W)``: ``(H, W)`` float64."""
    weights = []
    with torch.no_grad():
        for start in range(0, masks.shape[0], chunk):
            logits = model(x * masks[start : start + chunk])
            weights.append(torch.softmax(logits, dim=1)[:, target])
    total = torch.cat(weights).double() @ masks.flatten(1).double()
    return (total / (masks.shape[0] * KEEP)).reshape(x.shape[-2:])


def relative_difference(a: Tensor, b: Tensor) -> float:
    """``max |a − b| / max |b|``."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def shape_warmup(fn: Callable[[Tensor], object], x: Tensor, sizes: set[int]) -> Callable:
    """A warm-up that runs ``fn`` once on a batch of every size in ``sizes``."""
    return lambda: [fn(x.expand(n, *x.shape[1:]).contiguous()) for n in sorted(sizes - {0})]


def no_grad(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``model`` under ``torch.no_grad()``."""

    def run(batch: Tensor) -> Tensor:
        with torch.no_grad():
            return model(batch)

    return run


def load_captum() -> tuple[object | None, str]:
    """Captum's ``Occlusion`` and its version, or None and why not."""
    if importlib.util.find_spec("captum") is None:
        return None, "not installed"
    from importlib.metadata import version

    from captum.attr import Occlusion

    return Occlusion, f"captum {version('captum')}"


# -- occlusion -------------------------------------------------------------------------------------


def adapter_variants(model: nn.Module) -> dict[str, object]:
    """What salience's explainers are given, by label: the model itself (the library's default
    adapter) and, where ``TorchAdapter`` has a ``fuse`` option, an adapter with the other setting.
    """
    variants: dict[str, object] = {"": model}
    parameters = inspect.signature(TorchAdapter).parameters
    parameter = parameters.get("fuse")
    if parameter is not None:
        other = not parameter.default
        # the bundled model is traceable, as its opener tells the adapter it opens
        trust = {"trusted_trace": True} if "trusted_trace" in parameters else {}
        variants[f", TorchAdapter(fuse={other})"] = TorchAdapter(model, fuse=other, **trust)
    return variants


def occlusion_part(
    args: argparse.Namespace, model: nn.Module, x: Tensor, target: int, captum: object
) -> None:
    """Time occlusion (729 windows), its lower bounds and Captum; check the maps."""
    runs: dict[str, Callable[[], object]] = {}
    warmups: dict[str, Callable[[], object]] = {}
    results: dict[str, object] = {}
    ours: dict[str, Tensor] = {}
    for label, given in adapter_variants(model).items():
        explainer = salience.Occlusion(given, window=WINDOW, stride=STRIDE)
        explanation = explainer(x, target)  # also the warm-up: inference copy, every shape
        name = f"salience Occlusion (chunk {explainer.chunk_size}{label})"
        ours[name] = explanation.attributions[0, 0]
        count = explanation.info["windows"]
        runs[name] = lambda e=explainer: e(x, target)
        warmups[name] = lambda: None  # warmed up above
    with torch.no_grad():
        base = float(model(x)[0, target])

    bounds = {chunk: f"lower bound: {count} plain fwd, chunks of {chunk}" for chunk in PLAIN_CHUNKS}
    for chunk, key in bounds.items():

        def bound(chunk: int = chunk, key: str = key) -> None:
            results[key] = plain_occlusion(model, x, target, chunk)

        runs[key] = bound
        warmups[key] = shape_warmup(no_grad(model), x, {chunk, count % chunk})
    peers = []
    if captum is not None:
        occlusion = captum(model)
        for ppe in CAPTUM_PPE:
            key = f"Captum Occlusion, perturbations_per_eval={ppe}"
            peers.append(key)

            def peer(ppe: int = ppe, key: str = key) -> None:
                results[key] = occlusion.attribute(
                    x,
                    target=target,
                    sliding_window_shapes=(3, WINDOW, WINDOW),
                    strides=(3, STRIDE, STRIDE),
                    baselines=0,
                    perturbations_per_eval=ppe,
                )

            runs[key] = peer
            warmups[key] = shape_warmup(no_grad(model), x, {ppe, count % ppe})

    print(
        f"occlusion: window {WINDOW}, stride {STRIDE}, zero baseline, logit of the target: "
        f"{count} windows (none skipped); {args.repeats} interleaved rounds after a warm-up of "
        "every batch shape"
    )
    times = common.interleaved(runs, args.repeats, warmup=warmups, progress=False)

    print("maps (max|Δ| / max|map|, target <= 1e-4):")
    reference = occlusion_map(base, results[bounds[PLAIN_CHUNKS[0]]], x.shape[-1])
    for name, map_ in ours.items():
        check(f"{name} vs the map of the lower bound's {count} scores", map_, reference)
        for key in peers:
            theirs = results[key][0]
            equal = bool((theirs == theirs[:1]).all())
            check(f"{name} vs {key} (its channels equal: {equal})", map_, theirs[0])
    print()

    bound = bounds[PLAIN_CHUNKS[0]]
    rows: list[tuple[str, str | None, str]] = [(bound, None, "")]
    rows += [(bounds[c], bound, "") for c in PLAIN_CHUNKS[1:]]
    for name in ours:
        rows += [(name, bounds[c], ">= 2") for c in PLAIN_CHUNKS]
    for key in peers:
        rows += [(key, bound, "")]
        rows += [(name, key, "") for name in ours]
    print_table(times, rows, count)


def check(label: str, ours: Tensor, reference: Tensor) -> None:
    """Print one map comparison."""
    difference = relative_difference(ours, reference)
    verdict = "ok" if difference <= TOLERANCE else "DIFFERENT"
    peak = float(reference.abs().max())
    print(f"  {label}: {difference:.1e} ({verdict}; max of the map {peak:.3g})")


# -- RISE ------------------------------------------------------------------------------------------


def rise_part(args: argparse.Namespace, model: nn.Module, x: Tensor, target: int) -> None:
    """Time RISE with ``--masks`` masks against its lower bounds; check the map."""
    count = args.masks
    runs: dict[str, Callable[[], object]] = {}
    warmups: dict[str, Callable[[], object]] = {}
    results: dict[str, Tensor] = {}
    ours: dict[str, Tensor] = {}
    for label, given in adapter_variants(model).items():
        rise = salience.RISE(given, n_masks=count, grid=GRID, keep=KEEP, seed=SEED)
        name = f"salience RISE (chunk {rise.chunk_size}{label})"
        ours[name] = rise(x, target).attributions[0, 0]  # also the warm-up
        runs[name] = lambda e=rise: e(x, target)
        warmups[name] = lambda: None
    masks = rise.mask_maker(tuple(x.shape[-2:]), x.device)(slice(0, count))

    bounds = {chunk: f"lower bound: {count} plain fwd, chunks of {chunk}" for chunk in PLAIN_CHUNKS}
    for chunk, key in bounds.items():

        def bound(chunk: int = chunk, key: str = key) -> None:
            results[key] = plain_rise(model, x, target, masks, chunk)

        runs[key] = bound
        warmups[key] = shape_warmup(no_grad(model), x, {chunk, count % chunk})

    print(
        f"RISE: {count} masks, grid {GRID}, keep {KEEP}, seed {SEED}, softmax probability of the "
        f"target (none skipped); {args.repeats} interleaved rounds after a warm-up of every batch "
        "shape; the lower bound's masks are made before timing"
    )
    times = common.interleaved(runs, args.repeats, warmup=warmups, progress=False)
    print("map (max|Δ| / max|map|, target <= 1e-4):")
    for name, map_ in ours.items():
        for key in bounds.values():
            check(f"{name} vs {key}", map_, results[key])
    print()
    bound = bounds[PLAIN_CHUNKS[0]]
    rows: list[tuple[str, str | None, str]] = [(bound, None, "")]
    rows += [(bounds[c], bound, "") for c in PLAIN_CHUNKS[1:]]
    for name in ours:
        rows += [(name, bounds[c], ">= 2") for c in PLAIN_CHUNKS]
    print_table(times, rows, count)


# -- where the time goes ---------------------------------------------------------------------------


def occlusion_masks(rows: slice, where: list[tuple[int, int]], size: int) -> Tensor:
    """Occlusion's masks of ``rows``: a copy of the mask function inside Occlusion.attribute."""
    masks = torch.ones(rows.stop - rows.start, 1, size, size)
    for i, (r, c) in enumerate(where[rows]):
        masks[i, :, r : r + WINDOW, c : c + WINDOW] = 0
    return masks


def in_chunks(fn: Callable[[slice], object], chunk: int, total: int = WHERE_IMAGES) -> Callable:
    """``fn`` on consecutive slices of ``range(total)``."""
    return lambda: [fn(slice(s, min(s + chunk, total))) for s in range(0, total, chunk)]


def stubbed(
    adapter: TorchAdapter, copy: nn.Module, batch: Tensor, chunk: int
) -> Callable[[slice], object]:
    """``adapter.forward`` on rows of ``batch`` with the copy's ``forward`` replaced by a stub
    that returns ready outputs: what the adapter itself does per call (input checks, lock, copy
    lookup and weights fingerprint, hooks, channels-last copy of the input, clone, cat)."""
    with torch.inference_mode():
        ready = copy(batch[:chunk].contiguous(memory_format=torch.channels_last))

    def run(rows: slice) -> None:
        copy.forward = lambda inputs: ready[: inputs.shape[0]]
        try:
            adapter.forward(batch[rows])
        finally:
            del copy.forward

    return run


def where_part(args: argparse.Namespace, model: nn.Module, x: Tensor, target: int) -> None:
    """Per perturbed image: forward passes, adapter overhead, masks, masked inputs, sums."""
    size = x.shape[-1]
    chunk = PERTURBATION_CHUNK_SIZE
    adapter = TorchAdapter(model)
    adapter.forward(x)  # builds the inference copy
    copy = cached_inference_copy(model, x, fold=True, channels_last=True)
    where = corners(size, WINDOW, STRIDE)
    masks = occlusion_masks(slice(0, WHERE_IMAGES), where, size)
    batch = x * masks  # content does not matter for speed; these are occluded images
    batch_cl = batch.contiguous(memory_format=torch.channels_last)
    rise = salience.RISE(model, n_masks=WHERE_IMAGES, grid=GRID, keep=KEEP, seed=SEED)
    rise_masks = rise.mask_maker((size, size), x.device)
    substrate = torch.zeros_like(x)
    weights = torch.rand(WHERE_IMAGES, 1)

    def plain(rows: slice) -> None:
        with torch.no_grad():
            model(batch[rows])

    def direct(rows: slice) -> None:
        with torch.inference_mode():
            copy(batch_cl[rows])

    def masked(rows: slice) -> None:
        chosen = masks[rows].to(x)
        substrate + (x - substrate) * chosen

    runs: dict[str, Callable[[], object]] = {}
    for c in (32, 16, chunk):
        runs[f"plain model forward, chunks of {c} (no_grad, NCHW)"] = in_chunks(plain, c)
    for c in sorted({chunk, 32}):
        runs[f"inference copy called directly, chunks of {c}"] = in_chunks(direct, c)
    for c in sorted({chunk, 32}):
        runs[f"TorchAdapter.forward, chunks of {c}"] = in_chunks(
            lambda rows: adapter.forward(batch[rows]), c
        )
    for label, given in adapter_variants(model).items():
        if label:  # the other fuse setting, as the engine calls it (bulk=True: many passes)
            for c in sorted({chunk, 32}):
                key = f"{label.removeprefix(', ')}.forward(bulk=True), chunks of {c}"
                runs[key] = in_chunks(lambda rows, a=given: a.forward(batch[rows], bulk=True), c)
    runs[f"occlusion masks, chunks of {chunk}"] = in_chunks(
        lambda rows: occlusion_masks(rows, where, size), chunk
    )
    runs[f"RISE masks (mask_maker), chunks of {chunk}"] = in_chunks(rise_masks, chunk)
    runs[f"masked inputs (engine's formula), chunks of {chunk}"] = in_chunks(masked, chunk)
    runs["RISE weighted sum (its masks made again, float64)"] = lambda: (
        weights.double().T @ rise_masks(slice(0, WHERE_IMAGES)).flatten(1).double()
    )
    stub = f"TorchAdapter.forward with the copy's forward stubbed, chunks of {chunk}"
    runs[stub] = in_chunks(stubbed(adapter, copy, batch, chunk), chunk)
    print(
        f"where the time goes, per perturbed image ({WHERE_IMAGES} images per candidate); "
        f"{args.fast_repeats} interleaved rounds after a warm-up; library chunk size {chunk}"
    )
    times = common.interleaved(runs, args.fast_repeats, progress=False)
    reference = "plain model forward, chunks of 32 (no_grad, NCHW)"
    print("| step | ms per image | spread | vs plain forward, chunks of 32 (paired) |")
    print("|---|---:|---:|---:|")
    for key, values in times.items():
        per = common.median(values) / WHERE_IMAGES * 1000
        ratio = common.paired_ratio(times, key, reference)
        print(f"| {key} | {per:.2f} | {common.spread(values):.0%} | {ratio:.3f} |")
    per_call = common.median(times[stub]) / (WHERE_IMAGES / chunk) * 1000
    print(f"the adapter's own work in TorchAdapter.forward: {per_call:.3f} ms per call")


# -- chunk size ------------------------------------------------------------------------------------


def adapter_options(label: str) -> dict[str, object]:
    """The ``TorchAdapter`` options of an :func:`adapter_variants` label ("" for the default)."""
    return {"fuse": label.endswith("(fuse=True)")} if label else {}


def bulk_forward(adapter: TorchAdapter) -> Callable[[Tensor], Tensor]:
    """``adapter.forward`` as the engine calls it for many passes (``bulk=True`` where it can)."""
    if "bulk" in inspect.signature(adapter.forward).parameters:
        return lambda batch: adapter.forward(batch, bulk=True)
    return adapter.forward


def chunks_part(args: argparse.Namespace, model: nn.Module, x: Tensor, target: int) -> None:
    """Seconds per occluded image by chunk size; peak memory per chunk size."""
    count = len(corners(x.shape[-1], WINDOW, CHUNK_STRIDE))
    runs: dict[str, Callable[[], object]] = {}
    warmups: dict[str, Callable[[], object]] = {}
    labels = []
    for label, given in adapter_variants(model).items():
        adapter = given if isinstance(given, TorchAdapter) else TorchAdapter(given)
        forward = bulk_forward(adapter)
        labels.append(label)
        for size in args.chunks:
            explainer = salience.Occlusion(
                adapter, window=WINDOW, stride=CHUNK_STRIDE, chunk_size=size
            )
            key = f"{label}|{size}"
            runs[key] = lambda e=explainer: e(x, target)
            # every batch shape twice (TorchScript specialises on the second call)
            shapes = {min(size, count), count % size}
            warm = shape_warmup(forward, x, shapes)
            warmups[key] = lambda warm=warm: (warm(), warm())
    print(
        f"chunk size: Occlusion(window={WINDOW}, stride={CHUNK_STRIDE}) = {count} occluded images "
        f"per explanation; {args.fast_repeats} interleaved rounds after a warm-up of every batch "
        "shape"
    )
    start = common.cpu_snapshot()
    times = common.interleaved(runs, args.fast_repeats, warmup=warmups, progress=False)
    busy = common.others_busy(start)
    for label in labels:
        name = label.removeprefix(", ") or "the default TorchAdapter"
        memory = {
            size: rss_run(args, "occlusion", count, size, 0, adapter_options(label))
            for size in args.chunks
        }
        keys = [f"{label}|{size}" for size in args.chunks]
        per = {key: common.median(times[key]) / count for key in keys}
        best = min(per, key=per.__getitem__)
        print(f"adapter: {name}")
        print(
            "| chunk | median s | s per image | spread | vs best (paired) | peak RSS increase MiB |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for key in keys:
            size = int(key.split("|")[1])
            mark = " (best)" if key == best else ""
            data = memory[size]
            print(
                f"| {size}{mark} | {common.median(times[key]):.3f} | {per[key]:.5f} | "
                f"{common.spread(times[key]):.0%} | {common.paired_ratio(times, key, best):.3f} | "
                f"{data['peak'] - data['baseline']:.0f} |"
            )
        line = f"best chunk size: {best.split('|')[1]}"
        default = f"{label}|{PERTURBATION_CHUNK_SIZE}"
        if default in times:
            ratio = common.paired_ratio(times, default, best)
            line += f"; the library's PERTURBATION_CHUNK_SIZE = {PERTURBATION_CHUNK_SIZE} is "
            line += f"{ratio:.3f}x it"
        print(line + "\n")
    print(f"(while timing: {busy})")


# -- peak memory -----------------------------------------------------------------------------------


class FirstChunksAdapter(TorchAdapter):
    """Runs the model on the first ``real`` batches of perturbed images only (memory runs).

    Later batches get the last real batch's outputs (its first rows). Single images (the
    methods' unperturbed forward passes) always run. ``real`` = 0 runs every batch.
    """

    def __init__(self, model: nn.Module, real: int, **options: object) -> None:
        super().__init__(model, **options)
        self.left = real if real > 0 else None
        self.last: Tensor | None = None
        self.real_batches = 0
        self.reused_batches = 0

    def forward(self, x: Tensor, **options: object) -> Tensor:
        """The model's outputs, or the last real batch's for batches past the first ``real``."""
        if x.shape[0] == 1:
            return super().forward(x, **options)
        if self.left is None or self.left > 0 or x.shape[0] > self.last.shape[0]:
            self.last = super().forward(x, **options)
            self.real_batches += 1
            if self.left is not None:
                self.left -= 1
            return self.last
        self.reused_batches += 1
        return self.last[: x.shape[0]].clone()


def rss_child(args: argparse.Namespace) -> None:
    """Child mode: RSS with the model loaded and run once, then the peak of one run; print JSON.

    The high-water mark is reset to the current RSS first (``/proc/self/clear_refs``), so the
    increase is what the run needed on top of what the process held; where that cannot be done,
    the baseline is ``ru_maxrss`` so far, which hides whatever fits under earlier peaks.
    """
    method, count, chunk, real, options = args.rss_child
    count, chunk, real = int(count), int(chunk), int(real)
    model, x, target = common.setup(args.threads)  # loads the model and runs it once
    adapter = FirstChunksAdapter(model, real, **json.loads(options))
    if method == "rise":
        explainer = salience.RISE(
            adapter, n_masks=count, grid=GRID, keep=KEEP, seed=SEED, chunk_size=chunk
        )
    else:  # the chunk-size workload
        explainer = salience.Occlusion(
            adapter, window=WINDOW, stride=CHUNK_STRIDE, chunk_size=chunk
        )
    if common.reset_peak():
        baseline, how = common.memory_mib()["VmRSS"], "VmRSS after resetting VmHWM"
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        how = "ru_maxrss so far"
    start = time.perf_counter()
    explainer(x, target)
    seconds = time.perf_counter() - start
    peak = common.memory_mib().get(
        "VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    result = {
        "baseline": baseline,
        "peak": peak,
        "how": how,
        "seconds": seconds,
        "real": adapter.real_batches,
        "reused": adapter.reused_batches,
    }
    print(json.dumps(result))


def rss_run(
    args: argparse.Namespace,
    method: str,
    count: int,
    chunk: int,
    real: int,
    options: dict[str, object] | None = None,
) -> dict:
    """One memory child (``options``: of its ``TorchAdapter``): its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--rss-child", method]
    command += [str(count), str(chunk), str(real), json.dumps(options or {})]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.no_thp:
        command.append("--no-thp")
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def rss_part(args: argparse.Namespace) -> None:
    """Peak RSS increase of one RISE explanation as the number of masks grows."""
    chunk = PERTURBATION_CHUNK_SIZE
    real = 0 if args.rss_full else args.rss_real
    ran = "every chunk" if real == 0 else f"the first {real} chunks (later ones reuse them)"
    print(
        f"peak RSS of one RISE explanation (chunk {chunk}), each in a fresh process, over the RSS "
        "with the model loaded and run once (the increase includes salience's inference copy: "
        f"about 19 MiB of weights); the model runs on {ran}"
    )
    print(
        "| masks | chunks through the model | reused | s | baseline MiB | peak MiB | "
        "increase MiB | all masks at once would be MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    how = set()
    for count in args.rss_masks:
        data = rss_run(args, "rise", count, chunk, real)
        how.add(data["how"])
        materialised = count * 224 * 224 * 4 / 2**20
        increase = data["peak"] - data["baseline"]
        print(
            f"| {count} | {data['real']} | {data['reused']} | {data['seconds']:.1f} | "
            f"{data['baseline']:.0f} | {data['peak']:.0f} | {increase:.0f} | {materialised:.0f} |"
        )
    print(f"baseline: {', '.join(sorted(how))}; peak: VmHWM")


# -- report ----------------------------------------------------------------------------------------


def print_table(
    times: dict[str, list[float]], rows: list[tuple[str, str | None, str]], count: int
) -> None:
    """Markdown table: medians, per image, spread, speed-up (reference / it) and paired."""
    print(
        "| candidate | median s | min s | ms per image | spread | reference | "
        "speed-up (ref / it) | paired | target |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---|")
    for name, den, goal in rows:
        values = times[name]
        cells = [
            name,
            f"{common.median(values):.3f}",
            f"{min(values):.3f}",
            f"{common.median(values) / count * 1000:.2f}",
            f"{common.spread(values):.0%}",
        ]
        if den is None:
            cells += ["", "", "", goal]
        else:
            ratio = common.median(times[den]) / common.median(values)
            cells += [den, f"{ratio:.3f}", f"{common.paired_ratio(times, den, name):.3f}", goal]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    """Run the timings, the checks and the memory children; print the report."""
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return
    model, x, target = common.setup(args.threads)
    print(common.header("salience occlusion / RISE benchmark: EfficientNet-Lite0", target))
    print(f"library PERTURBATION_CHUNK_SIZE = {PERTURBATION_CHUNK_SIZE}")
    captum, how = (None, "left out (--no-captum)") if args.no_captum else load_captum()
    if "occlusion" in args.parts:
        print(f"peer Captum: {how}")
    print()
    start = common.cpu_snapshot()
    if "occlusion" in args.parts:
        occlusion_part(args, model, x, target, captum)
        print()
    if "rise" in args.parts:
        rise_part(args, model, x, target)
        print()
    if "where" in args.parts:
        where_part(args, model, x, target)
        print()
    if "chunks" in args.parts:
        chunks_part(args, model, x, target)
    print(common.footer(start))
    if "rss" in args.parts:
        print()
        rss_part(args)


if __name__ == "__main__":
    main()
