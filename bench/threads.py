"""How much the maps move with the torch thread count: float sums taken in another order.

``salience explain``, ``salience batch`` and ``POST /api/explain`` draw byte-identical maps and
overlays at the same thread count (``tests/test_render.py``). With more threads torch splits its
reductions (convolutions, matrix products, the gradient sums) into other partial sums, so a map
differs in its last bits. This script explains the bundled EfficientNet-Lite0 on
``skimage.data.chelsea`` (its preset, the predicted class) at each thread count and reports, per
method, the largest difference from the one-thread map relative to that map's largest absolute
value, and the share of overlay pixels (``salience.render``, default display) that differ.

Run by hand: ``PYTHONPATH=src python bench/threads.py [--threads 1,2,4] [--samples 10]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from salience.api import explain_all, make_explainer
from salience.loading import open_model
from salience.render import DisplayOptions, render
from salience.zoo import SAMPLE_IMAGES

METHODS = ("gradient", "integrated_gradients", "smoothgrad", "gradcam", "gradcam++")


def maps_at(threads: int, samples: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Method -> (raw map in float64, overlay) at ``threads`` torch threads."""
    torch.set_num_threads(threads)
    loaded = open_model("efficientnet_lite0")
    image = loaded.preset.prepare(SAMPLE_IMAGES["chelsea"]())
    options = {"integrated_gradients": {"steps": samples}, "smoothgrad": {"n_samples": samples}}
    explainers = [make_explainer(loaded.adapter, m, **options.get(m, {})) for m in METHODS]
    found = explain_all(loaded.adapter, image.tensor, explainers, class_names=loaded.class_names)
    display = DisplayOptions()
    return {
        name: (
            explanation.map(0, 0).double().numpy(),
            render(explanation, 0, image, display).overlay,
        )
        for name, explanation in found.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2,4", help="comma-separated thread counts")
    parser.add_argument("--samples", type=int, default=10, help="SmoothGrad samples, IG steps")
    args = parser.parse_args()
    counts = [int(part) for part in args.threads.split(",")]
    reference = maps_at(counts[0], args.samples)
    print(f"torch {torch.__version__}; reference: {counts[0]} thread(s)")
    print(f"{'method':<22} {'threads':>7} {'max |Δ| / max |map|':>20} {'overlay px differ':>18}")
    for threads in counts[1:]:
        for name, (raw, overlay) in maps_at(threads, args.samples).items():
            base, base_overlay = reference[name]
            relative = np.abs(raw - base).max() / np.abs(base).max()
            pixels = np.any(overlay != base_overlay, axis=-1).mean()
            print(f"{name:<22} {threads:>7} {relative:>20.2e} {pixels:>17.3%}")


if __name__ == "__main__":
    main()
