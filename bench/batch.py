"""Throughput of ``salience batch``: images per second of the local engine (and Ray) against the
single-process lower bound, on the embedded EfficientNet-Lite0.

The **lower bound** is what one worker cannot avoid: the bundled model's forward pass (for the
predicted class) plus the method (``explain_all``) on tensors prepared before timing, in this
process with ONE torch thread, as each worker runs. The **engines** run the whole job: read and
decode each PNG, preprocess, forward, method, post-process, draw the overlay on the original
photo, encode the maps (``.npz``) and PNGs, send them to the job, which writes every file
atomically (fsync) and the record last. Their rate is measured two ways: *steady* counts the
results after the first ``workers`` ones, between the arrival of the ``workers``-th and the last
(worker start-up and model opening excluded); *end to end* is images / wall time of
``run_job`` (start-up, table and index page included).

Target: steady rate of the local engine >= 0.9 × lower bound × workers. Also measured: the
*scaling* of the whole pipeline, the local engine's steady rate with ``workers`` workers over
``workers`` × its rate with one worker (``local-1``). The rounds are
interleaved (lower bound, local, ray, then the other way round) and the ratio is the median of
same-round ratios. Images: the bundled photos (chelsea, coffee, rocket, astronaut) cycled, saved
as PNG; a fresh output folder every round.

With ``--groups``, also the time per image of one worker (one torch thread, in this process)
explaining the images one by one (``ItemWorker.process``) against in groups of one shape
(``ItemWorker.process_all``, up to ``GROUP_SIZE`` per call, what the engines run), the whole work
on an image included (decoding, rendering, encoding), interleaved rounds, paired medians.

Run by hand: ``PYTHONPATH=src python bench/batch.py [--images 48] [--repeats 3] [--workers 2]
[--method gradient] [--no-ray] [--groups]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (below, and in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image

from common import cpu_snapshot, footer
from salience.api import explain_all, make_explainer, method_options
from salience.cli import method_names
from salience.loading import open_model
from salience.runner import JobSpec, make_engine, run_job
from salience.runner.work import GROUP_SIZE, ItemResult, ItemWorker, Task, read_task
from salience.zoo import SAMPLE_IMAGES

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


class Timed:
    """An engine that notes when each result arrives."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.name = engine.name
        self.arrivals: list[float] = []

    def describe(self) -> str:
        return self.engine.describe()

    def results(self, spec: JobSpec, tasks: Iterable[Task]) -> Iterator[ItemResult]:
        for result in self.engine.results(spec, tasks):
            self.arrivals.append(time.perf_counter())
            yield result


def make_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    photos = [SAMPLE_IMAGES[name]() for name in PHOTOS]
    for i in range(count):
        Image.fromarray(photos[i % len(photos)]).save(folder / f"{i:04d}.png")


def lower_bound(spec: JobSpec, folder: Path, count: int) -> float:
    """Images per second of forward + method on prepared tensors, one thread."""
    loaded = open_model(spec.model, spec.load_options)
    explainers = [
        make_explainer(loaded.adapter, m, **method_options(m, spec.options)) for m in spec.methods
    ]
    tensors = [loaded.preset.prepare(path).tensor for path in sorted(folder.glob("*.png"))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        explain_all(loaded.adapter, tensors[0], explainers)  # warm-up
        start = time.perf_counter()
        for x in tensors[:count]:
            loaded.adapter.forward(x)
            explain_all(loaded.adapter, x, explainers, class_names=loaded.class_names)
        return min(count, len(tensors)) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def worker_seconds(spec: JobSpec, folder: Path, repeats: int) -> list[tuple[float, float]]:
    """Per round, (one by one, grouped) seconds per image of one worker, one thread."""
    from salience.runner import collect_inputs

    tasks = [read_task(item) for item in collect_inputs(folder)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker = ItemWorker(spec)
        worker.process_all(tasks[:GROUP_SIZE])  # warm-up: a group's shape and a single one's
        worker.process(tasks[0])
        rounds = []
        for r in range(repeats):
            times = {}
            for way in ("single", "grouped") if r % 2 == 0 else ("grouped", "single"):
                start = time.perf_counter()
                if way == "single":
                    results = [worker.process(task) for task in tasks]
                else:
                    results = worker.process_all(tasks)
                times[way] = (time.perf_counter() - start) / len(tasks)
                assert all(result.record["status"] == "done" for result in results)
            rounds.append((times["single"], times["grouped"]))
        return rounds
    finally:
        torch.set_num_threads(threads)


def report_groups(rounds: list[tuple[float, float]]) -> None:
    single = statistics.median(one for one, _ in rounds)
    grouped = statistics.median(group for _, group in rounds)
    ratio = statistics.median(group / one for one, group in rounds)
    print(
        f"one worker, 1 thread, s per image: one by one {single:.3f}, in groups of up to "
        f"{GROUP_SIZE} {grouped:.3f}; grouped / one by one {ratio:.2f} (paired median)"
    )


def engine_rates(spec: JobSpec, folder: Path, engine: object, workers: int) -> tuple[float, float]:
    """(steady, end-to-end) images per second of one job into a fresh folder."""
    timed = Timed(engine)
    out = Path(tempfile.mkdtemp(prefix="salience-bench-out-"))
    try:
        start = time.perf_counter()
        summary = run_job(spec, folder, out, engine=timed, progress=False)
        wall = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    arrivals = timed.arrivals
    steady = (len(arrivals) - workers) / (arrivals[-1] - arrivals[workers - 1])
    return steady, summary.explained / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="images per engine run")
    parser.add_argument("--bound-images", type=int, default=12, help="images per lower bound")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--method", default="gradient")
    parser.add_argument("--samples", type=int, default=8, help="SmoothGrad/VarGrad samples")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--no-thp", action="store_true")
    parser.add_argument("--groups", action="store_true", help="also one worker: groups or not")
    args = parser.parse_args()

    spec = JobSpec(methods=tuple(method_names(args.method)), options={"n_samples": args.samples})
    engines = {"local": make_engine("local", args.workers)}
    if args.workers > 1:  # the whole pipeline in one worker: the scaling reference
        engines["local-1"] = make_engine("local", 1)
    workers = {name: 1 if name == "local-1" else args.workers for name in engines}
    if not args.no_ray:
        try:
            import ray

            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            engines["ray"] = make_engine("ray", args.workers)
        except ImportError:
            print("ray is not installed: its engine is left out", file=sys.stderr)
    folder = Path(tempfile.mkdtemp(prefix="salience-bench-images-"))
    make_images(folder, args.images)
    print(
        f"{args.images} PNG images (bundled photos), methods {', '.join(spec.methods)}, "
        f"{args.workers} workers; {args.repeats} interleaved rounds",
        flush=True,
    )
    start = cpu_snapshot()
    bounds: list[float] = []
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    try:
        for r in range(args.repeats):
            order = ["bound", *engines]
            for name in order if r % 2 == 0 else order[::-1]:
                if name == "bound":
                    bounds.append(lower_bound(spec, folder, args.bound_images))
                else:
                    rates[name].append(engine_rates(spec, folder, engines[name], workers[name]))
            print(f"  round {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        groups = worker_seconds(spec, folder, args.repeats) if args.groups else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if groups is not None:
        report_groups(groups)
    bound = statistics.median(bounds)
    print(
        f"\nlower bound, 1 process, 1 thread: {bound:.2f} images/s (median; rounds: "
        f"{', '.join(f'{b:.2f}' for b in bounds)})"
    )
    print(
        f"{'engine':<8} {'steady img/s':>13} {'end-to-end':>11} {'steady / (bound × workers)':>28}"
    )
    for name, values in rates.items():
        ratio = statistics.median(
            steady / (b * workers[name]) for (steady, _), b in zip(values, bounds, strict=True)
        )
        steady = statistics.median(v[0] for v in values)
        whole = statistics.median(v[1] for v in values)
        print(f"{name:<8} {steady:>13.2f} {whole:>11.2f} {ratio:>28.2f}")
    if "local-1" in rates:
        scaling = statistics.median(
            many[0] / (args.workers * one[0])
            for many, one in zip(rates["local"], rates["local-1"], strict=True)
        )
        print(
            f"scaling of the whole pipeline: steady(local, {args.workers} workers) / "
            f"({args.workers} × steady(local, 1 worker)) = {scaling:.2f}"
        )
    print(footer(start))
    if "ray" in engines:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
