"""Seconds per sample of 50-sample SmoothGrad by chunk size, memory layout and BatchNorm folding.

Runs ``salience.SmoothGrad(adapter, n_samples=50, chunk_size=c)`` on the embedded
EfficientNet-Lite0 and one 1×3×224×224 photo, for every chunk size ``c`` in 1, 2, 4, 8, 16, 32, 50
and every adapter setting ``TorchAdapter(model, channels_last=…, fold_batchnorm=…)``, all
interleaved within each round (A B C … then … C B A), and prints the median seconds per sample,
each setting relative to the best (median of same-round ratios), and the best setting.
``salience.methods.base.DEFAULT_CHUNK_SIZE`` should be the chunk size this supports.

``THP_MEM_ALLOC_ENABLE=1`` is set before torch is imported (``--no-thp``: 0), as in
``bench/methods.py``.

Run by hand: ``PYTHONPATH=src python bench/chunk_size.py [--repeats N]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
import statistics
from collections.abc import Callable

from torch import Tensor, nn

import common
import salience
from salience.adapters.torch import TorchAdapter
from salience.methods.base import DEFAULT_CHUNK_SIZE

CHUNKS = (1, 2, 4, 8, 16, 32, 50)
#: (fold_batchnorm, channels_last), the library default first.
LAYOUTS = ((True, True), (True, False), (False, True), (False, False))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--samples", type=int, default=50, help="SmoothGrad samples (default 50)")
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=list(CHUNKS), help="chunk sizes to time"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--no-thp", action="store_true", help="run with THP_MEM_ALLOC_ENABLE=0")
    return parser.parse_args(argv)


def layout_name(fold: bool, channels_last: bool) -> str:
    """Short column name of an adapter setting."""
    return f"{'fold' if fold else 'no fold'}/{'CL' if channels_last else 'NCHW'}"


def candidates(
    model: nn.Module, x: Tensor, target: int, chunks: list[int], samples: int
) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], object]]]:
    """The timed calls by ``"layout|chunk"``, and cheap warm-ups covering the same batch shapes."""
    runs: dict[str, Callable[[], object]] = {}
    warmups: dict[str, Callable[[], object]] = {}
    for fold, channels_last in LAYOUTS:
        adapter = TorchAdapter(model, fold_batchnorm=fold, channels_last=channels_last)
        for chunk in chunks:
            key = f"{layout_name(fold, channels_last)}|{chunk}"
            explainer = salience.SmoothGrad(adapter, n_samples=samples, chunk_size=chunk)
            # one full chunk and the last, partial one: every batch shape of the timed run
            warm = min(samples, chunk + samples % chunk)
            warmup = salience.SmoothGrad(adapter, n_samples=warm, chunk_size=chunk)
            runs[key] = lambda e=explainer: e(x, target)
            warmups[key] = lambda e=warmup: e(x, target)
    return runs, warmups


def report(times: dict[str, list[float]], chunks: list[int], samples: int) -> None:
    """Print the table of seconds per sample, the ratios to the best, and the best setting."""
    per_sample = {key: common.median(values) / samples for key, values in times.items()}
    best = min(per_sample, key=per_sample.__getitem__)
    columns = [layout_name(*layout) for layout in LAYOUTS]
    print("median seconds per sample  [median same-round ratio to the best setting]")
    print(f"{'chunk':>5}  " + "  ".join(f"{name:>20}" for name in columns))
    for chunk in chunks:
        cells = []
        for name in columns:
            key = f"{name}|{chunk}"
            ratio = common.paired_ratio(times, key, best)
            cells.append(f"{per_sample[key]:9.4f} [{ratio:5.2f}x]".rjust(20))
        print(f"{chunk:>5}  " + "  ".join(cells))
    print()
    layout, chunk = best.split("|")
    print(f"best: {layout}, chunk size {chunk}: {per_sample[best]:.4f} s/sample")
    for name in columns:
        row = {c: per_sample[f"{name}|{c}"] for c in chunks}
        top = min(row, key=row.__getitem__)
        print(f"  best chunk for {name:<12}: {top:>3} ({row[top]:.4f} s/sample)", end="")
        if DEFAULT_CHUNK_SIZE in row:
            slower = common.paired_ratio(times, f"{name}|{DEFAULT_CHUNK_SIZE}", f"{name}|{top}")
            print(f"; default chunk {DEFAULT_CHUNK_SIZE} is {slower:.3f}x that")
        else:
            print()
    default = f"{layout_name(True, True)}|{DEFAULT_CHUNK_SIZE}"
    if default in times:
        ratio = common.paired_ratio(times, default, best)
        print(
            f"library default (fold/CL, chunk {DEFAULT_CHUNK_SIZE}): "
            f"{per_sample[default]:.4f} s/sample, {ratio:.3f}x the best"
        )
    # the two adapter options, each averaged over chunk sizes >= 4 (paired, same round)
    for label, on, off in (
        ("channels_last (fold)", "fold/CL", "fold/NCHW"),
        ("fold_batchnorm (NCHW)", "fold/NCHW", "no fold/NCHW"),
    ):
        values = [common.paired_ratio(times, f"{on}|{c}", f"{off}|{c}") for c in chunks if c >= 4]
        if values:
            ratio = statistics.median(values)
            print(f"{label} on / off, median over chunk sizes >= 4: {ratio:.3f}")


def main(argv: list[str] | None = None) -> None:
    """Time every setting; print the table."""
    args = parse_args(argv)
    model, x, target = common.setup(args.threads)
    title = f"SmoothGrad-{args.samples} chunk-size benchmark: EfficientNet-Lite0"
    print(common.header(title, target))
    print(f"{args.repeats} interleaved rounds after a warm-up of every batch shape\n")
    runs, warmups = candidates(model, x, target, args.chunks, args.samples)
    start = common.cpu_snapshot()
    times = common.interleaved(runs, args.repeats, warmup=warmups)
    report(times, args.chunks, args.samples)
    print(common.footer(start))


if __name__ == "__main__":
    main()
