"""Make the README's figures: docs/images/cat_methods.png, volume_montage.png, signal_trace.png.

Run from the repository root (offline, deterministic, about a minute on two cores):

    .venv/bin/python docs/figures.py

``cat_methods.png`` is the ``grid.png`` that ``salience explain`` writes for the bundled
EfficientNet-Lite0 on the cat photo with three methods. ``volume_montage.png`` is the montage of
:func:`salience.volumes.save_montage` for a synthetic scan (a smooth background, a bright box
and a bright ball) and a small 3-D CNN whose score is the sum of the box's voxels, explained
with Grad-CAM: the map is high in the box, not on the ball. ``signal_trace.png`` is the figure of
:func:`salience.signals.save_signal_figure` for a two-lead synthetic signal and a 1-D model whose
score sums both leads over one window, explained with Integrated Gradients: the bands light up in
that window only.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salience
from salience.cli import main as cli
from salience.fileio import write_bytes_atomic
from salience.signals import Signal, save_signal_figure
from salience.volumes import Volume, save_montage, volume_map

IMAGES = Path(__file__).resolve().parent / "images"
METHODS = ("gradcam", "integrated_gradients", "occlusion")
SIDE = 48
"""The phantom scan's side in voxels (a multiple of 8)."""
LENGTH = 400
"""The synthetic signal's time steps."""


def cat_methods(
    output: str | Path,
    methods: tuple[str, ...] = METHODS,
    *,
    steps: int = 32,
    window: int = 32,
    stride: int = 16,
) -> Path:
    """Write the grid ``salience explain`` draws for the cat photo with ``methods``.

    Parameters
    ----------
    output : str or Path
        The PNG to write (atomically).
    methods : tuple of str
        The methods, side by side after the photo.
    steps : int
        Integrated Gradients' steps.
    window, stride : int
        Occlusion's patch and step, in pixels of the model's 224×224 input.
    """
    with tempfile.TemporaryDirectory() as folder:
        argv = ["explain", "chelsea", "--method", ",".join(methods), "--steps", str(steps)]
        if "occlusion" in methods:
            argv += ["--window", str(window), "--stride", str(stride)]
        code = cli([*argv, "--quiet", "-o", folder])
        if code != 0:
            raise RuntimeError(f"salience explain exited with {code}")
        return write_bytes_atomic(output, (Path(folder) / "grid.png").read_bytes())


def phantom(side: int = SIDE) -> tuple[Volume, tuple[slice, slice, slice]]:
    """A synthetic scan ``(1, side, side, side)``: smooth blobs, a bright box and a bright ball.

    Returns
    -------
    (Volume, box)
        The scan (1 mm voxels) and the box's voxels, on the 2-voxel grid of :class:`BoxNet`.
    """
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij")).astype(np.float64)
    centres = np.random.default_rng(0).uniform(0, side, size=(6, 3))
    data = sum(
        np.exp(-((grid - c[:, None, None, None]) ** 2).sum(0) / (side / 4) ** 2) for c in centres
    )
    data = 0.3 * data / data.max()
    h = side // 8
    box = (slice(2 * h, 4 * h), slice(4 * h, 6 * h), slice(4 * h, 6 * h))
    data[box] += 1.0
    centre = np.array([6 * h, 2 * h, 5 * h])[:, None, None, None]
    ball = ((grid - centre) ** 2).sum(0) < (1.4 * h) ** 2
    data[ball] += 1.0
    return Volume(data[None].astype(np.float32), np.eye(4), "phantom"), box


class BoxNet(nn.Module):
    """Score 0 is the sum of the scan over ``box`` (averaged in 2×2×2 cells).

    ``features`` outputs the pooled scan inside the box and zero elsewhere: the automatic CAM
    layer, so Grad-CAM's map is the pooled scan inside the box.
    """

    def __init__(self, box: tuple[slice, slice, slice], side: int = SIDE) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        mask = torch.zeros(1, side // 2, side // 2, side // 2)
        mask[(0, *(slice(b.start // 2, b.stop // 2) for b in box))] = 1
        self.register_buffer("mask", mask)
        self.features = Masked()

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.avg_pool3d(self.conv(x), 2)
        return self.features(pooled, self.mask).sum(dim=(2, 3, 4))


class Masked(nn.Module):
    """The feature map times a fixed mask."""

    def forward(self, pooled: Tensor, mask: Tensor) -> Tensor:
        return pooled * mask


def volume_montage(
    output: str | Path, side: int = SIDE
) -> tuple[Path, np.ndarray, tuple[slice, slice, slice]]:
    """Explain :class:`BoxNet` on :func:`phantom` with Grad-CAM and write the montage.

    Returns
    -------
    (Path, numpy.ndarray, box)
        The written PNG, the map it draws ``(side, side, side)`` and the box's voxels.
    """
    scan, box = phantom(side)
    net = BoxNet(box, side).eval()
    explanation = salience.explain(net, scan.tensor(), method="gradcam", target=0)
    saliency = volume_map(explanation.map(), scan.shape)
    title = "Grad-CAM of a 3-D CNN that sums the bright box (not the ball)"
    return save_montage(output, scan, saliency, title=title), saliency, box


def two_leads(length: int = LENGTH) -> tuple[Signal, slice]:
    """A synthetic two-lead signal (beats on a slow wander) and the window a model scores."""
    time = np.arange(length, dtype=np.float64)
    beats = sum(np.exp(-(((time - t) / 4.0) ** 2)) for t in range(length // 8, length, length // 4))
    wander = 0.2 * np.sin(2 * np.pi * time / length)
    data = np.stack([beats + wander, 0.6 * beats - wander]).astype(np.float32)
    window = slice(9 * length // 16, 11 * length // 16)  # around the third beat
    return Signal(data, ("I", "II"), "two leads"), window


class WindowNet(nn.Module):
    """Score 0 is the sum of both leads over ``window``; ``features`` is the masked sum."""

    def __init__(self, window: slice, length: int = LENGTH) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
        mask = torch.zeros(1, length)
        mask[0, window] = 1
        self.register_buffer("mask", mask)
        self.features = Masked()

    def forward(self, x: Tensor) -> Tensor:
        return self.features(self.conv(x), self.mask).sum(dim=2)


def signal_trace(output: str | Path, length: int = LENGTH) -> tuple[Path, np.ndarray, slice]:
    """Explain :class:`WindowNet` on :func:`two_leads` with Integrated Gradients and write the
    traces with their saliency bands.

    Returns
    -------
    (Path, numpy.ndarray, slice)
        The written PNG, the map it draws ``(2, length)`` and the window the model sums.
    """
    signal, window = two_leads(length)
    net = WindowNet(window, length).eval()
    explanation = salience.explain(net, signal.tensor(), method="integrated_gradients", target=0)
    saliency = explanation.map().detach().numpy()
    title = "Integrated Gradients of a 1-D model that sums both leads over one window"
    return save_signal_figure(output, signal, saliency, title=title), saliency, window


def main() -> int:
    """Write every figure into docs/images."""
    for path in (
        cat_methods(IMAGES / "cat_methods.png"),
        volume_montage(IMAGES / "volume_montage.png")[0],
        signal_trace(IMAGES / "signal_trace.png")[0],
    ):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
