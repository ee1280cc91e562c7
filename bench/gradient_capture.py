"""Candidates for faster gradient passes (SmoothGrad, Integrated Gradients), measured side by side.

SmoothGrad-50 and IG-50 are 50 forward + backward passes. The capture that makes the perturbation
methods fast (``bench/capture.py``) is forward-only: a frozen TorchScript program cannot be
differentiated. This script measures what could take its place for gradient passes, on the
embedded EfficientNet-Lite0 as a user's ``nn.Module`` (salience's folded, channels-last inference
copy of it), one backward pass of the summed class score per chunk of ``--chunk`` images 224×224:

* ``eager``: the inference copy, what salience runs today;
* ``side by side``: the chunk split in two halves, each half's forward and backward on its own
  thread with torch on one thread (copies of the module sharing its tensors);
* ``inductor`` (``--inductor``; needs a C++ compiler, minutes): ``torch.compile`` of the copy,
  forward and backward compiled by AOTAutograd and inductor.

Reported per candidate: the first-call cost (compilation), the steady time per image against
eager (interleaved rounds, medians, paired ratios) and the largest difference of its gradient
from eager's, relative to eager's largest value. Gradients of a ReLU6 network are discontinuous
where an activation sits at 0 or 6: float sums taken in another order move a few elements to
the other side, so differences of 1e-3 relative here are rounding, not a wrong graph.

Run by hand: ``PYTHONPATH=src python bench/gradient_capture.py [--repeats 7] [--inductor]``.
"""

from __future__ import annotations

import os

# torch reads this once when it starts (see bench/methods.py): decide before importing it.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import copy
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from common import chelsea, cpu_snapshot, footer, interleaved, load_model, median, paired_ratio
from salience.adapters.inference_copy import build_inference_copy

TARGET = 281
Step = Callable[[Tensor], Tensor]


def input_gradient(module: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The gradient of ``module(x)[:, TARGET].sum()`` with respect to ``x`` (channels-last)."""
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x)[:, TARGET].sum(), x)
    return grad


def sharing_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are ``module``'s own tensors."""
    tensors = [*module.parameters(), *module.buffers()]
    return copy.deepcopy(module, {id(t): t for t in tensors})


def side_by_side(module: nn.Module) -> Step:
    """Halves of a chunk on two threads, torch on one thread while they run."""
    copies = [module, sharing_copy(module)]
    pool = ThreadPoolExecutor(max_workers=2)

    def step(x: Tensor) -> Tensor:
        half = x.shape[0] // 2
        parts = (x[:half], x[half:])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            grads = list(pool.map(input_gradient, copies, parts))
        finally:
            torch.set_num_threads(threads)
        return torch.cat(grads)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--chunk", type=int, default=8, help="images per pass (default 8)")
    parser.add_argument("--inductor", action="store_true", help="also torch.compile (minutes)")
    args = parser.parse_args()

    x = chelsea().repeat(args.chunk, 1, 1, 1)
    x = x + 0.15 * x.std() * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    module = build_inference_copy(load_model(), x.contiguous(memory_format=torch.channels_last))
    module = module.to(memory_format=torch.channels_last)
    steps: dict[str, Step] = {
        "eager": lambda batch: input_gradient(module, batch),
        "side by side": side_by_side(module),
    }
    if args.inductor:
        compiled = torch.compile(module)
        steps["inductor"] = lambda batch: input_gradient(compiled, batch)

    reference = steps["eager"](x)
    first_call, difference = {}, {}
    for name, step in steps.items():
        start = time.perf_counter()
        grad = step(x)
        first_call[name] = time.perf_counter() - start
        difference[name] = float((grad - reference).abs().max() / reference.abs().max())

    start = cpu_snapshot()
    times = interleaved({name: lambda s=step: s(x) for name, step in steps.items()}, args.repeats)
    print(f"\none gradient pass of {args.chunk} images, {args.repeats} interleaved rounds")
    header = ("first call s", "ms / image", "vs eager", "max diff")
    print(f"{'candidate':<16}" + "".join(f"{h:>14}" for h in header))
    for name in steps:
        print(
            f"{name:<16}{first_call[name]:>14.2f}{median(times[name]) / args.chunk * 1e3:>14.1f}"
            f"{paired_ratio(times, name, 'eager'):>14.2f}{difference[name]:>14.1e}"
        )
    print(footer(start))


if __name__ == "__main__":
    main()
