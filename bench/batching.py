"""Time one call on a batch of N images against N single-image calls.

For the embedded EfficientNet-Lite0 on CPU, ``salience.explain(model, x_N, method=...)`` on a
batch of N photos (scikit-image's four sample photos, each also flipped left-right, upside down
and both, preprocessed with the zoo model's preset: up to 16 different 224×224 images) is timed
against N calls ``salience.explain(model, x_i, method=...)``, one per image, for N = 1, 4, 16 and
the methods gradient, Grad-CAM (automatic layer) and SmoothGrad (``--samples``; fixed seed). Each
call is what a user writes: it builds the model's inference copy and resolves the predicted
class. With ``--full``, ``salience.explain_all`` with the three methods is timed the same way.

All candidates run interleaved (A B C … then … C B A, so load drifts hit all alike); the table
gives the median seconds per image of each, and the median over rounds of the same-round ratio
batched / single per-image time (< 1: the batch is cheaper per image). ``--quick`` (the default)
runs 3 rounds with 2 SmoothGrad samples, ``--full`` 5 rounds with 10 and explain_all. A loaded
machine inflates both sides alike, but the ratios are only as steady as the spread printed with
them.

Run by hand: ``PYTHONPATH=src python bench/batching.py [--quick | --full] [--repeats N]
[--samples S] [--sizes ...] [--threads T] [--json PATH]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (below, and in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
from collections.abc import Callable

import torch
from torch import Tensor, nn

import salience
from common import (
    cpu_snapshot,
    footer,
    interleaved,
    load_model,
    machine_line,
    median,
    paired_ratio,
    spread,
    thp_state,
)
from record import add_record_argument, write_record
from salience.zoo import EFFICIENTNET_LITE0_PRESET, SAMPLE_IMAGES

SEED = 0
METHODS = ("gradient", "gradcam", "smoothgrad")
ALL = "explain_all"
QUICK = {"repeats": 3, "samples": 2}
"""Under 3 minutes on a loaded 2-core machine."""
FULL = {"repeats": 5, "samples": 10}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help=f"the default: {QUICK['repeats']} rounds, SmoothGrad {QUICK['samples']} samples, "
        "no explain_all",
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help=f"{FULL['repeats']} rounds, SmoothGrad {FULL['samples']} samples, and explain_all",
    )
    parser.add_argument("--repeats", type=int, help="timed rounds (default: by mode)")
    parser.add_argument("--samples", type=int, help="SmoothGrad samples (default: by mode)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 4, 16], help="batch sizes (default 1 4 16)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--no-thp", action="store_true", help="run with THP_MEM_ALLOC_ENABLE=0")
    add_record_argument(parser)
    args = parser.parse_args(argv)
    chosen = FULL if args.full else QUICK
    args.repeats = args.repeats or chosen["repeats"]
    args.samples = args.samples or chosen["samples"]
    return args


def photos(count: int) -> Tensor:
    """``(count, 3, 224, 224)``: the sample photos and their flips, preprocessed, all different."""
    base = [EFFICIENTNET_LITE0_PRESET.prepare(load()).tensor for load in SAMPLE_IMAGES.values()]
    flips: list[tuple[int, ...]] = [(), (3,), (2,), (2, 3)]
    images = [x.flip(dims) if dims else x for dims in flips for x in base]
    if count > len(images):
        raise SystemExit(f"at most {len(images)} different images; got --sizes {count}")
    return torch.cat(images[:count]).contiguous()


def candidates(
    model: nn.Module, x: Tensor, sizes: list[int], samples: int, methods: tuple[str, ...]
) -> dict[str, Callable[[], object]]:
    """Per batch size and method: one batched call and the N single calls, by name."""
    options = {"smoothgrad": {"n_samples": samples, "seed": SEED}}

    def one(method: str, batch: Tensor) -> Callable[[], object]:
        if method == ALL:
            return lambda: salience.explain_all(model, batch, METHODS, n_samples=samples, seed=SEED)
        return lambda: salience.explain(model, batch, method=method, **options.get(method, {}))

    def each(method: str, batch: Tensor) -> Callable[[], object]:
        calls = [one(method, batch[i : i + 1]) for i in range(batch.shape[0])]
        return lambda: [call() for call in calls]

    timed: dict[str, Callable[[], object]] = {}
    for n in sizes:
        for method in methods:
            timed[f"{method} N={n} batched"] = one(method, x[:n])
            timed[f"{method} N={n} single"] = each(method, x[:n])
    return timed


def table(
    times: dict[str, list[float]], sizes: list[int], methods: tuple[str, ...]
) -> tuple[list[str], dict[str, float]]:
    """Seconds per image and the batched / single ratio, per method and batch size."""
    lines = [
        f"{'method':<12} {'N':>3} {'batched s/img':>14} {'single s/img':>13} "
        f"{'ratio':>7} {'spread':>7}"
    ]
    ratios: dict[str, float] = {}
    for method in methods:
        for n in sizes:
            batched, single = f"{method} N={n} batched", f"{method} N={n} single"
            ratio = paired_ratio(times, batched, single)  # the same N images on both sides
            ratios[f"{method} N={n} batched/single"] = ratio
            worst = max(spread(times[batched]), spread(times[single]))
            lines.append(
                f"{method:<12} {n:>3} {median(times[batched]) / n:>14.4f} "
                f"{median(times[single]) / n:>13.4f} {ratio:>7.3f} {worst:>7.0%}"
            )
    return lines, ratios


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = sorted(set(args.sizes))
    model = load_model()
    x = photos(max(sizes))
    print("one call on a batch of N images vs N single calls, EfficientNet-Lite0, CPU")
    print(f"images: {max(sizes)} sample photos and flips, 3x224x224; SmoothGrad {args.samples}")
    print(machine_line())
    print(thp_state())
    methods = (*METHODS, ALL) if args.full else METHODS
    timed = candidates(model, x, sizes, args.samples, methods)
    # untimed warm-up: each method once, and the gradient once per batch shape (oneDNN kernels)
    warmup = {
        name: fn
        for name, fn in timed.items()
        if name.endswith(f"N={sizes[0]} batched") or name.startswith("gradient N=")
    }
    start = cpu_snapshot()
    times = interleaved(timed, args.repeats, warmup=warmup)
    lines, ratios = table(times, sizes, methods)
    print()
    print("\n".join(lines))
    print("ratio: median over rounds of batched / single time for the same N images (< 1: faster)")
    print(footer(start))
    write_record(args, "batching", ratios)


if __name__ == "__main__":
    main()
