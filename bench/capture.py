"""Candidates for the captured program of long runs of forward passes, measured side by side.

On the embedded EfficientNet-Lite0 as a user's ``nn.Module`` (salience's folded, channels-last
inference copy of it), for chunks of 8 images 224×224:

* ``eager``: the inference copy itself;
* ``trace (unsafe)``: ``torch.jit.trace`` + freeze + oneDNN fusion of the copy, what a trace
  that "hopes" gives (a value-dependent branch would be recorded as one path);
* ``export strict → frozen`` / ``export → frozen``: ``torch.export`` (strict, or not), then the
  exported graph traced, frozen, run with oneDNN fusion (safe: export refuses value-dependent
  control flow, so the graph has none);
* ``export → module``: the exported graph run as it is (``ExportedProgram.module()``);
* ``export → inductor`` (``--inductor``; needs a C++ compiler): ``torch.compile`` of it.

Reported per candidate: the first-call cost (capture, freezing, warm-up; the one-off cost of
importing torch's export machinery is given apart), the steady time of one chunk against eager
(interleaved rounds, medians, paired ratios), the resident memory it added, and its largest
difference from eager relative to eager's largest output (1e-4 is the bound salience verifies).

``--steps`` times instead, in a fresh process, each step of salience's own capture as a first run
pays it: importing torch's export machinery, export, trace + freeze, writing and reading the
program store's entry, and the warm-up calls (oneDNN compiles its kernels) of the program read
back, which every process pays.

``--batches 1 2 4 8 16 32`` times instead the captured program per image at each batch size
(interleaved rounds, medians): ``CAPTURED_BATCH`` in ``salience.adapters.torch`` is the best.

Run by hand: ``PYTHONPATH=src python bench/capture.py [--repeats 9] [--inductor] [--steps]
[--batches ...]``;
``--json`` adds the ratios to a record (``bench/record.py``).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import time
import warnings
from collections.abc import Callable

import torch

from common import (
    chelsea,
    cpu_snapshot,
    footer,
    interleaved,
    load_model,
    machine_line,
    median,
    memory_mib,
    paired_ratio,
)
from record import add_record_argument, write_record
from salience.adapters.fused import onednn_fusion
from salience.adapters.inference_copy import build_inference_copy

CHUNK = 8


def frozen_trace(module: torch.nn.Module, sample: torch.Tensor) -> torch.jit.ScriptModule:
    """``module`` traced, frozen (oneDNN fusion applies when it runs)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(module, sample, check_trace=False).eval())


def builders(with_inductor: bool) -> dict[str, Callable[[torch.nn.Module, torch.Tensor], object]]:
    """Candidate name → function building its runnable from the copy and a sample."""

    def exported(module: torch.nn.Module, sample: torch.Tensor, strict: bool) -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, (sample,), strict=strict).module()

    found: dict[str, Callable[[torch.nn.Module, torch.Tensor], object]] = {
        "eager": lambda module, _sample: module,
        "trace (unsafe)": frozen_trace,
        "export strict → frozen": lambda m, s: frozen_trace(exported(m, s, True), s),
        "export → frozen": lambda m, s: frozen_trace(exported(m, s, False), s),
        "export → module": lambda m, s: exported(m, s, False),
    }
    if with_inductor:
        found["export → inductor"] = lambda m, s: torch.compile(exported(m, s, False))
    return found


def steps(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """Seconds of each step of a first capture, then of reading it back from a program store."""
    import tempfile

    from salience.adapters import program_store
    from salience.adapters.fused import WARM_UP_CALLS

    eager = build_inference_copy(model, batch).to(memory_format=torch.channels_last)
    sample = batch.contiguous(memory_format=torch.channels_last)
    seconds = {}

    def timed(name: str, step: Callable[[], object]) -> object:
        began = time.perf_counter()
        result = step()
        seconds[name] = time.perf_counter() - began
        return result

    def warm_up(program: torch.jit.ScriptModule) -> None:
        with torch.inference_mode(), onednn_fusion():
            for _ in range(WARM_UP_CALLS):
                program(sample)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timed("import torch's export machinery", lambda: importlib.import_module("torch._dynamo"))
        exported = timed(
            "torch.export (non-strict)", lambda: torch.export.export(eager, (sample,), strict=False)
        )
        program = timed("trace + freeze", lambda: frozen_trace(exported.module(), sample))
        timed("warm-up of the new program", lambda: warm_up(program))
        with tempfile.TemporaryDirectory() as folder:
            os.environ[program_store.ENVIRONMENT] = folder
            name = timed("fingerprint", lambda: program_store.fingerprint(eager, sample, ()))
            timed("store: write", lambda: program_store.write(name, program))
            stored = timed("store: read", lambda: program_store.read(name))
            timed("warm-up of the program read back", lambda: warm_up(stored))
    return seconds


def per_image(model: torch.nn.Module, sizes: list[int], repeats: int) -> dict[str, float]:
    """Seconds per image of the captured program at each batch size (interleaved, medians)."""
    from salience.adapters.fused import build_fused, run_fused

    photo, runs, images = chelsea(), {}, {}
    for size in sizes:
        batch = photo.repeat(size, 1, 1, 1) + 0.1 * torch.randn(size, 3, 224, 224)
        eager = build_inference_copy(model, batch).to(memory_format=torch.channels_last)
        sample = batch.contiguous(memory_format=torch.channels_last)
        program = build_fused(eager, sample).program
        calls = max(1, 64 // size)

        def run(program: object = program, sample: torch.Tensor = sample, calls: int = calls):
            for _ in range(calls):
                run_fused(program, sample)

        runs[f"batch {size}"] = run
        images[f"batch {size}"] = calls * size
    times = interleaved(runs, repeats)
    return {name: median(values) / images[name] for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--inductor", action="store_true", help="also torch.compile (slow)")
    parser.add_argument("--steps", action="store_true", help="time each step of one capture")
    parser.add_argument("--batches", type=int, nargs="+", help="time the program per batch size")
    add_record_argument(parser)
    args = parser.parse_args()
    start = cpu_snapshot()
    print("capture candidates, EfficientNet-Lite0 inference copy, chunks of", CHUNK)
    print(machine_line())
    model = load_model()
    batch = chelsea().repeat(CHUNK, 1, 1, 1) + 0.1 * torch.randn(CHUNK, 3, 224, 224)
    if args.batches:
        found = per_image(model, args.batches, args.repeats)
        for name, value in found.items():
            print(f"  {name:<10} {value * 1000:7.2f} ms per image")
        print(footer(start))
        write_record(
            args, "capture batches", {f"capture: s per image, {k}": v for k, v in found.items()}
        )
        return
    if args.steps:
        found = steps(model, batch)
        for name, value in found.items():
            print(f"  {name:<34} {value:6.2f} s")
        print(footer(start))
        write_record(args, "capture steps", {f"capture step: {k}, s": v for k, v in found.items()})
        return
    eager = build_inference_copy(model, batch).to(memory_format=torch.channels_last)
    sample = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = eager(sample)
    began = time.perf_counter()
    importlib.import_module("torch._dynamo")  # the one-off import every export pays first

    import_cost = time.perf_counter() - began
    runnables, first, memory, error = {}, {}, {}, {}
    for name, build in builders(args.inductor).items():
        before = memory_mib()["VmRSS"]
        began = time.perf_counter()
        runnable = build(copy.deepcopy(eager), sample)
        with torch.inference_mode(), onednn_fusion():
            for _ in range(3):  # TorchScript optimizes after two calls; inductor compiles on one
                output = runnable(sample)
        first[name] = time.perf_counter() - began
        memory[name] = memory_mib()["VmRSS"] - before
        error[name] = float((output - reference).abs().max() / reference.abs().max())
        runnables[name] = runnable

    def timed(runnable: object) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), onednn_fusion():
                return runnable(sample)

        return run

    times = interleaved({name: timed(r) for name, r in runnables.items()}, args.repeats)
    print(f"one-off import of torch's export machinery: {import_cost:.2f} s")
    print(
        f"{'candidate':<24} {'first call s':>12} {'chunk s':>8} {'vs eager':>9} "
        f"{'+RSS MiB':>9} {'max rel err':>12}"
    )
    ratios = {}
    for name in runnables:
        ratio = paired_ratio(times, name, "eager")
        ratios[f"capture: {name} / eager, chunk of {CHUNK}"] = ratio
        ratios[f"capture: {name}, first call s"] = first[name]
        print(
            f"{name:<24} {first[name]:>12.2f} {median(times[name]):>8.3f} {ratio:>9.3f} "
            f"{memory[name]:>9.0f} {error[name]:>12.1e}"
        )
    print(footer(start))
    write_record(args, "capture", ratios)


if __name__ == "__main__":
    main()
