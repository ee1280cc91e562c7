"""Occlusion on an ONNX model against the same number of plain onnxruntime runs, side by side.

The embedded EfficientNet-Lite0 is exported to ONNX (a temporary file, dynamic batch) and
opened with ``salience.OnnxAdapter``. Candidates, interleaved rounds, medians:

* ``plain onnxruntime``: ``session.run`` on the 169 occluded images (window 32, stride 16),
  made beforehand, in chunks of the chunk size: the floor salience's occlusion is held to;
* ``salience occlusion``: ``salience.Occlusion`` on the adapter, same windows and chunks
  (torch on one thread for the whole run: ``OnnxAdapter.long_run``);
* ``salience occlusion, torch threads shared``: the same with that switch made a no-op, what
  salience did before.

Reported: occlusion / plain (target ≤ 1.0) for each, and plain onnxruntime's time per image at
chunk sizes 1, 4, 8, 16 (the chunk size the perturbation methods use for it).

Run by hand: ``PYTHONPATH=src python bench/onnx_runtime.py [--repeats 7]``; ``--json`` adds
the ratios to a record (``bench/record.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch

import salience.adapters.onnx as onnx_adapter
from common import (
    chelsea,
    cpu_snapshot,
    footer,
    interleaved,
    load_model,
    machine_line,
    median,
    paired_ratio,
)
from record import add_record_argument, write_record
from salience.methods.perturbation import Occlusion

WINDOW, STRIDE = 32, 16


def export(path: Path) -> None:
    """The embedded model as ONNX, batch dimension dynamic."""
    torch.onnx.export(
        load_model(),
        (torch.zeros(1, 3, 224, 224),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )


def occluded(x: torch.Tensor) -> np.ndarray:
    """The images occlusion runs: one per window, the window set to zero."""
    images = []
    for top in range(0, 224 - WINDOW + 1, STRIDE):
        for left in range(0, 224 - WINDOW + 1, STRIDE):
            image = x.clone()
            image[..., top : top + WINDOW, left : left + WINDOW] = 0
            images.append(image)
    return torch.cat(images).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk-size", type=int, default=8)
    add_record_argument(parser)
    args = parser.parse_args()
    start = cpu_snapshot()
    print(machine_line())
    x = chelsea()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lite0.onnx"
        export(path)
        adapter = onnx_adapter.OnnxAdapter(path)
        session = adapter.session
        images = occluded(x)
        size = args.chunk_size

        def plain(chunk: int = size) -> None:
            for i in range(0, len(images), chunk):
                session.run(None, {"image": images[i : i + chunk]})

        explainer = Occlusion(adapter, window=WINDOW, stride=STRIDE, chunk_size=size)

        def shared_threads() -> None:
            owned = onnx_adapter.onnxruntime_owns_the_cores
            onnx_adapter.onnxruntime_owns_the_cores = contextlib.nullcontext
            try:
                explainer(x, target=0)
            finally:
                onnx_adapter.onnxruntime_owns_the_cores = owned

        candidates = {
            "plain onnxruntime": plain,
            "salience occlusion": lambda: explainer(x, target=0),
            "salience occlusion, torch threads shared": shared_threads,
        }
        times = interleaved(candidates, args.repeats, progress=False)
        print(f"{len(images)} windows, chunks of {size}; medians (s):")
        for name, values in times.items():
            print(f"  {name:<42} {median(values):.3f}")
        ratios = {
            f"onnx: {name} / plain onnxruntime": paired_ratio(times, name, "plain onnxruntime")
            for name in candidates
            if name != "plain onnxruntime"
        }
        for name, ratio in ratios.items():
            print(f"  {name}: {ratio:.3f} (target <= 1.0)")
        chunks = {f"chunk {c}": lambda c=c: plain(c) for c in (1, 4, 8, 16)}
        per_chunk = interleaved(chunks, max(3, args.repeats // 2), progress=False)
        print("plain onnxruntime, ms per image:")
        for name, values in per_chunk.items():
            print(f"  {name:<10} {1000 * median(values) / len(images):.1f}")
    print(footer(start))
    write_record(args, "onnx_runtime", ratios)


if __name__ == "__main__":
    main()
