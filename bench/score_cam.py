"""Score-CAM against the same number of plain forward passes (and pytorch-grad-cam where it is
installed), side by side.

On the embedded EfficientNet-Lite0 as a user's ``nn.Module`` (no options), one 224×224 photo,
layer ``_blocks.15`` (320 channels, none constant on this photo, so every channel is scored):

* ``salience Score-CAM``: ``salience.ScoreCAM(model, layer=...)`` built once (a long run:
  the captured program runs it, ``salience.adapters.fused``);
* ``salience Score-CAM, fuse=False``: the same on ``TorchAdapter(model, fuse=False)``, the eager
  inference copy;
* ``plain forwards``: the model in eval mode, ``torch.no_grad()``, on the 320 masked images in
  chunks of 8, the masks made inside the timed loop as Score-CAM makes them;
* ``pytorch-grad-cam ScoreCAM`` (batch size 8), when ``pytorch_grad_cam`` imports (``make
  bench`` installs it).

Interleaved rounds after a warm-up (which also builds the captured program: the steady state is
timed; ``bench/capture.py`` gives the first-call cost), medians, paired ratios. Run by hand:
``PYTHONPATH=src python bench/score_cam.py [--repeats 5]``; ``--json`` adds the ratios to a
record (``bench/record.py``).
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (as bench/cams.py does).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
import copy

import torch

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
from grad_cam_peer import load_peer
from record import add_record_argument, write_record
from salience.adapters.torch import TorchAdapter
from salience.methods.score_cam import ScoreCAM
from salience.postprocess import upsample

LAYER = "_blocks.15"
CHUNK = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-thp", action="store_true", help="THP_MEM_ALLOC_ENABLE=0")
    add_record_argument(parser)
    args = parser.parse_args()
    start = cpu_snapshot()
    print(machine_line())
    model, x = load_model(), chelsea()
    with torch.no_grad():
        target = int(model(x).argmax())
    captured = ScoreCAM(model, layer=LAYER)
    eager = ScoreCAM(TorchAdapter(model, fuse=False), layer=LAYER)
    activations = []
    handle = model.get_submodule(LAYER).register_forward_hook(
        lambda _m, _i, out: activations.append(out.detach())
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    features = activations[0][0]

    def plain() -> None:
        with torch.no_grad():
            for i in range(0, features.shape[0], CHUNK):
                masks = upsample(features[i : i + CHUNK], (224, 224))
                low = masks.flatten(1).amin(1).reshape(-1, 1, 1)
                high = masks.flatten(1).amax(1).reshape(-1, 1, 1)
                model(x * ((masks - low) / (high - low)).unsqueeze(1)).softmax(1)

    candidates = {
        "salience Score-CAM": lambda: captured(x, target),
        "salience Score-CAM, fuse=False": lambda: eager(x, target),
        "plain forwards": plain,
    }
    peer, how = load_peer()
    if peer is None:
        print(f"pytorch-grad-cam {how}: peer left out (make bench installs it)")
    else:
        print(f"peer: {how}")
        # its hooks stay on the model it is given for as long as it lives: a copy of its own,
        # so that salience's candidates explain a model without hooks, as a user's would be
        clone = copy.deepcopy(model)
        peer_cam = peer.ScoreCAM(clone, [clone.get_submodule(LAYER)])
        peer_cam.batch_size = CHUNK
        candidates["pytorch-grad-cam ScoreCAM"] = lambda: peer_cam(
            x, targets=[peer.ClassifierOutputTarget(target)]
        )
    found = captured(x, target)
    print(
        f"layer {LAYER}: {features.shape[0]} channels, {found.info['skipped_channels']} "
        f"skipped; {found.info.get('execution')}"
    )
    times = interleaved(candidates, args.repeats, progress=False)
    ratios = {}
    for name, values in times.items():
        print(f"  {name:<34} {median(values):.2f} s")
    for other in candidates:
        if other != "salience Score-CAM":
            ratio = paired_ratio(times, other, "salience Score-CAM")
            ratios[f"scorecam: {other} / salience Score-CAM"] = ratio
            print(f"  {other} / salience Score-CAM: {ratio:.2f} (target >= 2)")
    print(footer(start))
    write_record(args, "score_cam", ratios)


if __name__ == "__main__":
    main()
