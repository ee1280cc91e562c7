"""Time the check that keeps every cache of a model current, against one gradient call.

Before each explanation the adapter proves that its private copies still match the user's model
(:func:`salience.adapters.inference_copy.model_state`): it walks the module tree (names, types,
identities, attributes, hooks) and compares a digest of every parameter's and buffer's bytes
with the one recorded with it. For EfficientNet-Lite0 on one 1×3×224×224 photo
(``skimage.data.chelsea``), the predicted class, on CPU, measured interleaved (A B C … then
… C B A) with medians of same-round ratios to ``salience.Gradient(model)(x, target)``
(explainer built once; the call includes one check). Target: the check <= 3% of the gradient
call. Candidates:

* ``check``: the whole check on an unchanged model (what every explanation pays);
* ``tree walk``: its first half, the module tree and attributes alone;
* ``contents``: its second half, the 128-bit XXH3 digest of every tensor's bytes, read in
  place and compared with the digest recorded with the state (one read of the weights, no copy);
* alternatives measured for the choice: ``memcmp, snapshot`` (the C library's ``memcmp``
  against a copy of the weights: two reads and one extra copy), ``torch.equal, int views`` (the
  same comparison in torch, the fallback for tensors that are not dense CPU tensors), ``crc32``
  of every tensor's bytes (zlib's, slower than XXH3 and only 32 bits), and ``versions`` (the
  identity, pointer and version counter of every tensor, which cannot see writes through
  ``.data``).

``THP_MEM_ALLOC_ENABLE=1`` is set before torch is imported (``--no-thp``: 0), as in
``bench/methods.py``.

Run by hand: ``PYTHONPATH=src python bench/freshness.py [--repeats N] [--threads N]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (below, and in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
import ctypes
import zlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

import common
import salience
from salience.adapters.inference_copy import _identical, describe, model_state

TARGET = 0.03
"""The check may cost at most this share of one gradient call."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--no-thp", action="store_true", help="run with THP_MEM_ALLOC_ENABLE=0")
    return parser.parse_args(argv)


def candidates(model: nn.Module, x: Tensor, target: int) -> dict[str, Callable[[], object]]:
    """What is timed: the gradient call, the check, its halves and the alternatives."""
    explainer = salience.Gradient(model)
    state = model_state(model)
    tensors = describe(model.named_modules(remove_duplicate=False))[1]
    snapshot = [t.detach().clone() for t in tensors]
    library = ctypes.CDLL(None)
    memcmp = library.memcmp
    memcmp.restype = ctypes.c_int
    memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]

    def contents() -> bool:
        return state.matches(state.structure, tensors)

    def compare_bytes() -> bool:
        return all(
            memcmp(a.data_ptr(), b.data_ptr(), a.nbytes) == 0
            for a, b in zip(snapshot, tensors, strict=True)
        )

    def int_equal() -> bool:
        return all(map(_identical, snapshot, tensors))

    def crc32() -> int:
        total = 0
        for t in tensors:
            total = zlib.crc32(t.detach().reshape(-1).view(torch.uint8).numpy(), total)
        return total

    def versions() -> tuple:
        return tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    return {
        "gradient": lambda: explainer(x, target=target),
        "check": lambda: model_state(model),
        "tree walk": lambda: describe(model.named_modules(remove_duplicate=False)),
        "contents": contents,
        "memcmp, snapshot": compare_bytes,
        "torch.equal, int views": int_equal,
        "crc32": crc32,
        "versions": versions,
    }


def report(times: dict[str, list[float]], tensors: int, elements: int) -> None:
    """Median seconds and same-round ratios to the gradient call."""
    print(f"{tensors} parameter and buffer tensors, {elements:,} values\n")
    print(f"{'candidate':<24} {'median ms':>10} {'/ gradient':>11}")
    for name, values in times.items():
        ratio = common.paired_ratio(times, name, "gradient")
        print(f"{name:<24} {common.median(values) * 1e3:>10.2f} {ratio:>10.2%}")
    ratio = common.paired_ratio(times, "check", "gradient")
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"\nthe check is {ratio:.2%} of a gradient call: {verdict} the {TARGET:.0%} target")


def main(argv: list[str] | None = None) -> None:
    """Time every candidate; print the table."""
    args = parse_args(argv)
    model, x, target = common.setup(args.threads)
    print(common.header("Freshness check benchmark: EfficientNet-Lite0", target))
    print(f"{args.repeats} interleaved rounds after a warm-up of every candidate\n")
    runs = candidates(model, x, target)
    start = common.cpu_snapshot()
    times = common.interleaved(runs, args.repeats)
    tensors = describe(model.named_modules(remove_duplicate=False))[1]
    report(times, len(tensors), sum(t.numel() for t in tensors))
    print(common.footer(start))


if __name__ == "__main__":
    main()
