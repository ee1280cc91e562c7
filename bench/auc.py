"""The cost of a batch job's ``--auc`` per image: deletion and insertion curves as the job plays
them (``CausalMetric(..., bulk=True)``: the fused forward-only copy, built once per worker)
against one call at a time on the eager copy (``bulk`` left to the pass count: 225 step images
of a 224×224 image are under ``BULK_PASSES``, so the eager copy ran), and against the gradient
map they score.

EfficientNet-Lite0 on ``skimage.data.chelsea``, CPU, interleaved rounds (eager, bulk, gradient,
then the reverse); prints the median of same-round ratios. A first, untimed call builds the
fused copy (the job's first image pays that once).

    PYTHONPATH=src python bench/auc.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import salience
from salience.evaluation.faithfulness import MODES, CausalMetric
from salience.models import open_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loaded = open_model("efficientnet_lite0")
    adapter = loaded.adapter
    x = loaded.preset.prepare(salience.zoo.SAMPLE_IMAGES["chelsea"]()).tensor
    explanation = salience.explain(adapter, x, method="gradient")
    runs = {
        "eager": [CausalMetric(adapter, mode) for mode in MODES],
        "bulk": [CausalMetric(adapter, mode, bulk=True) for mode in MODES],
    }

    def curves(name: str) -> float:
        start = time.perf_counter()
        for metric in runs[name]:
            metric(x, explanation)
        return time.perf_counter() - start

    def gradient() -> float:
        start = time.perf_counter()
        salience.explain(adapter, x, method="gradient")
        return time.perf_counter() - start

    curves("bulk")  # builds the fused copy, as a job's first image does
    ratios: dict[str, list[float]] = {"eager/bulk": [], "bulk/gradient": []}
    for round_ in range(args.rounds):
        order = ["eager", "bulk", "gradient"]
        order = order if round_ % 2 == 0 else order[::-1]
        seconds = {name: gradient() if name == "gradient" else curves(name) for name in order}
        ratios["eager/bulk"].append(seconds["eager"] / seconds["bulk"])
        ratios["bulk/gradient"].append(seconds["bulk"] / seconds["gradient"])
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    for name, values in ratios.items():
        print(f"{name}: median {statistics.median(values):.2f}× over {len(values)} rounds")


if __name__ == "__main__":
    main()
