"""Seconds per channel of Score-CAM and Ablation-CAM by chunk size.

Runs ``salience.make_explainer(model, "scorecam" | "ablationcam", layer="_blocks.15",
chunk_size=c)`` on the embedded EfficientNet-Lite0 and one 1×3×224×224 photo, for every chunk
size ``c`` (Score-CAM: masked images per forward pass, default 1, 4, 8, 16, 32, 64;
Ablation-CAM: ablated channels per pass, default 8, 16, 32, 64, 128, 256, 320), all interleaved
within each round (A B C … then … C B A), and prints the median seconds per evaluated channel,
each chunk size relative to the method's best (median of same-round ratios), and the best chunk
size. ``SCORE_CAM_CHUNK_SIZE`` and ``ABLATION_CHUNK_SIZE`` in ``salience.methods.score_cam``
should be the chunk sizes this supports (with their peak memory: ``bench/cams.py``).

Every batch shape of a timed run is warmed up first (one forward pass of a full chunk and of the
last, partial one, on the same inference copy), so no first-call cost is timed.

``THP_MEM_ALLOC_ENABLE=1`` is set before torch is imported (``--no-thp``: 0), as in
``bench/methods.py``.

Run by hand: ``PYTHONPATH=src python bench/cam_chunk_size.py [--repeats N]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
from collections.abc import Callable

from torch import Tensor, nn

import common
import salience
from salience.adapters.torch import TorchAdapter
from salience.methods.score_cam import ABLATION_CHUNK_SIZE, SCORE_CAM_CHUNK_SIZE

LAYER = "_blocks.15"
SCORE_CHUNKS = (1, 4, 8, 16, 32, 64)
ABLATION_CHUNKS = (8, 16, 32, 64, 128, 256, 320)
DEFAULTS = {"scorecam": SCORE_CAM_CHUNK_SIZE, "ablationcam": ABLATION_CHUNK_SIZE}
CONSTANTS = {"scorecam": "SCORE_CAM_CHUNK_SIZE", "ablationcam": "ABLATION_CHUNK_SIZE"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--layer", default=LAYER, help=f"layer (default {LAYER})")
    parser.add_argument(
        "--score-chunks",
        type=int,
        nargs="*",
        default=list(SCORE_CHUNKS),
        help="Score-CAM chunk sizes (none: leave Score-CAM out)",
    )
    parser.add_argument(
        "--ablation-chunks",
        type=int,
        nargs="*",
        default=list(ABLATION_CHUNKS),
        help="Ablation-CAM chunk sizes (none: leave Ablation-CAM out)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--no-thp", action="store_true", help="run with THP_MEM_ALLOC_ENABLE=0")
    return parser.parse_args(argv)


def candidates(
    model: nn.Module, x: Tensor, layer: str, chunks: dict[str, list[int]]
) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], object]], dict[str, int]]:
    """Timed calls by ``"method|chunk"``, their warm-ups, and the evaluated channels per method."""
    adapter = TorchAdapter(model)  # the library default, as the explainers below use it
    runs: dict[str, Callable[[], object]] = {}
    warmups: dict[str, Callable[[], object]] = {}
    evaluated: dict[str, int] = {}
    for method, sizes in chunks.items():
        if not sizes:
            continue
        first = salience.make_explainer(adapter, method, layer=layer, chunk_size=sizes[0])
        info = first(x).info  # builds the inference copy; checks fan-out once per layer
        evaluated[method] = info["feature_shape"][0] - info["skipped_channels"]
        for size in sizes:
            key = f"{method}|{size}"
            explainer = salience.make_explainer(adapter, method, layer=layer, chunk_size=size)
            runs[key] = lambda e=explainer: e(x)
            if method == "scorecam":  # a full chunk of masked images, and the last partial one
                shapes = {min(size, evaluated[method]), evaluated[method] % size} - {0}
                warmups[key] = lambda shapes=shapes: [
                    adapter.forward(x.expand(n, *x.shape[1:])) for n in shapes
                ]
            else:  # cheap: run it
                warmups[key] = runs[key]
    return runs, warmups, evaluated


def report(times: dict[str, list[float]], evaluated: dict[str, int]) -> None:
    """Per method: seconds per channel by chunk size, ratio to the best, the best chunk size."""
    for method, channels in evaluated.items():
        keys = [key for key in times if key.startswith(f"{method}|")]
        per = {key: common.median(times[key]) / channels for key in keys}
        best = min(per, key=per.__getitem__)
        print(f"{method}: {channels} channels evaluated per explanation")
        print("| chunk | median s | s per channel | spread | vs best (paired) |")
        print("|---:|---:|---:|---:|---:|")
        for key in keys:
            size = key.split("|")[1]
            mark = " (best)" if key == best else ""
            print(
                f"| {size}{mark} | {common.median(times[key]):.3f} | {per[key]:.5f} | "
                f"{common.spread(times[key]):.0%} | {common.paired_ratio(times, key, best):.3f} |"
            )
        default = f"{method}|{DEFAULTS[method]}"
        line = f"best chunk size for {method}: {best.split('|')[1]}"
        if default in times:
            ratio = common.paired_ratio(times, default, best)
            line += f"; the library's {CONSTANTS[method]} = {DEFAULTS[method]} is {ratio:.3f}x it"
        print(line + "\n")


def main(argv: list[str] | None = None) -> None:
    """Time every chunk size; print the tables."""
    args = parse_args(argv)
    model, x, target = common.setup(args.threads)
    title = f"Score-CAM / Ablation-CAM chunk-size benchmark: EfficientNet-Lite0, layer {args.layer}"
    print(common.header(title, target))
    print(f"{args.repeats} interleaved rounds after a warm-up of every batch shape\n")
    chunks = {"scorecam": args.score_chunks, "ablationcam": args.ablation_chunks}
    runs, warmups, evaluated = candidates(model, x, args.layer, chunks)
    start = common.cpu_snapshot()
    times = common.interleaved(runs, args.repeats, warmup=warmups, progress=False)
    report(times, evaluated)
    print(common.footer(start).lstrip("\n"))


if __name__ == "__main__":
    main()
