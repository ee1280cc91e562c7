"""Time Grad-CAM and occlusion on a 64³ volume against their lower bound and against Captum.

The model is a small 3-D CNN (three Conv3d blocks with BatchNorm, ReLU and max pooling, global
average pooling, a linear head of 2 classes; seeded random weights, eval mode) on one
1×1×64×64×64 volume (seeded uniform noise plus a bright sphere), target class 0, on CPU, measured
interleaved (A B C … C B A) with medians of same-round ratios:

* Grad-CAM on the last Conv3d block's ReLU (32 × 16³). The lower bound, in the same process, is
  one forward of the plain model (eval mode, parameters frozen on a deep copy) with a forward
  hook that makes the layer's output a leaf and one ``torch.autograd.grad(score, leaf)`` (the
  backward stops at the layer); one full forward + backward to the input is reported too.
  Captum's ``LayerGradCam`` on the same layer is timed beside it (goal: salience <= 1.1× the
  lower bound); its map is compared with salience's (max |Δ| / max |map|).
* Occlusion with ``--window``³ windows every ``--stride`` voxels (default 16 and 16: 64
  windows), zero baseline. Captum's ``Occlusion`` runs the same windows
  (``sliding_window_shapes=(1, w, w, w)``, ``strides=(1, s, s, s)``), with its default of one
  perturbation per forward pass and with ``perturbations_per_eval=8``, salience's chunk size
  (goal: salience >= 2× faster than Captum's default); maps compared as above.

``THP_MEM_ALLOC_ENABLE=1`` is set before torch is imported (``--no-thp``: 0), as in
``bench/methods.py``.

Run by hand: ``PYTHONPATH=src python bench/volumes.py [--repeats N] [--window W] [--stride S]
[--threads T]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (below, and in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
import copy
import warnings

import torch
from torch import Tensor, nn

import salience
from common import cpu_snapshot, footer, interleaved, machine_line, median, paired_ratio, thp_state

SIDE = 64
LAYER = "features.10"


def volume_model() -> nn.Module:
    """Three Conv3d blocks (8, 16, 32 channels), global pooling, 2 classes; seeded, eval."""
    torch.manual_seed(0)
    blocks = []
    channels = [1, 8, 16, 32]
    for i in range(3):
        blocks += [
            nn.Conv3d(channels[i], channels[i + 1], 3, padding=1),
            nn.BatchNorm3d(channels[i + 1]),
            nn.ReLU(),
        ]
        if i < 2:
            blocks.append(nn.MaxPool3d(2))
    model = nn.Sequential()
    model.features = nn.Sequential(*blocks)
    model.pool = nn.AdaptiveAvgPool3d(1)
    model.flatten = nn.Flatten()
    model.head = nn.Linear(32, 2)
    for module in model.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def volume() -> Tensor:
    """Seeded noise in [0, 1) plus a bright sphere of radius 10 off the centre."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, SIDE, SIDE, SIDE, generator=generator)
    grid = torch.stack(torch.meshgrid(*[torch.arange(SIDE)] * 3, indexing="ij"))
    distance = (grid - torch.tensor([20, 36, 40]).reshape(3, 1, 1, 1)).square().sum(0).sqrt()
    return x + 2.0 * (distance < 10).float()


def gradcam_bound(model: nn.Module, x: Tensor, target: int):
    """One forward, and a backward that stops at the layer (the output made a leaf)."""
    plain = copy.deepcopy(model)
    for parameter in plain.parameters():
        parameter.requires_grad_(False)
    captured: list[Tensor] = []

    def leaf(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    plain.get_submodule(LAYER).register_forward_hook(leaf)

    def run() -> Tensor:
        captured.clear()
        score = plain(x)[:, target].sum()
        (grad,) = torch.autograd.grad(score, captured[0])
        return grad

    return run


def full_backward(model: nn.Module, x: Tensor, target: int):
    """One forward and one backward to the input."""
    plain = copy.deepcopy(model)
    for parameter in plain.parameters():
        parameter.requires_grad_(False)

    def run() -> Tensor:
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(plain(leaf)[:, target].sum(), leaf)
        return grad

    return run


def relative_gap(ours: Tensor, reference: Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-thp", action="store_true", help="THP_MEM_ALLOC_ENABLE=0")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # Captum's requires_grad notices
    from captum.attr import LayerGradCam, Occlusion

    start = cpu_snapshot()
    model, x, target = volume_model(), volume(), 0
    print("Grad-CAM and occlusion on a 1x1x64x64x64 volume, small 3-D CNN, target class 0")
    print(machine_line())
    print(thp_state())

    gradcam = salience.make_explainer(model, "gradcam", layer=LAYER)
    captum_cam = LayerGradCam(model, model.get_submodule(LAYER))
    times = interleaved(
        {
            "lower bound": gradcam_bound(model, x, target),
            "forward+backward": full_backward(model, x, target),
            "salience gradcam": lambda: gradcam(x, target=target),
            "captum LayerGradCam": lambda: captum_cam.attribute(x, target=target),
        },
        args.repeats,
    )
    ours = gradcam(x, target=target).attributions[0, 0]
    theirs = captum_cam.attribute(x, target=target, relu_attributions=True)[0, 0].detach()
    print("\nGrad-CAM on", LAYER, tuple(ours.shape))
    for name, values in times.items():
        print(f"  {name:<22} {median(values) * 1000:8.1f} ms")
    bound_ratio = paired_ratio(times, "salience gradcam", "lower bound")
    print(f"  salience / lower bound:      {bound_ratio:.2f}")
    print(
        "  salience / forward+backward: "
        f"{paired_ratio(times, 'salience gradcam', 'forward+backward'):.2f}"
    )
    print(
        "  captum / salience:           "
        f"{paired_ratio(times, 'captum LayerGradCam', 'salience gradcam'):.2f}"
    )
    print(f"  map vs Captum: max |Δ| / max |map| = {relative_gap(ours, theirs):.1e}")

    w, s = args.window, args.stride
    occlusion = salience.make_explainer(model, "occlusion", window=w, stride=s)
    captum_occlusion = Occlusion(model)
    windows = ((SIDE - w) // s + 1) ** 3

    def captum_run(per_eval: int):
        return lambda: captum_occlusion.attribute(
            x,
            sliding_window_shapes=(1, w, w, w),
            strides=(1, s, s, s),
            target=target,
            perturbations_per_eval=per_eval,
        )

    times = interleaved(
        {
            "salience occlusion": lambda: occlusion(x, target=target),
            "captum Occlusion": captum_run(1),
            "captum Occlusion x8": captum_run(8),
        },
        max(1, args.repeats // 2),
    )
    ours = occlusion(x, target=target).attributions[0, 0]
    theirs = captum_run(8)()[0, 0]
    print(f"\nocclusion, {w}³ windows every {s} voxels ({windows} windows)")
    for name, values in times.items():
        print(f"  {name:<22} {median(values):8.2f} s")
    for name in ("captum Occlusion", "captum Occlusion x8"):
        print(f"  {name} / salience: {paired_ratio(times, name, 'salience occlusion'):.2f}")
    print(f"  map vs Captum: max |Δ| / max |map| = {relative_gap(ours, theirs):.1e}")
    print(footer(start))


if __name__ == "__main__":
    main()
