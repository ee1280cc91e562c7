"""docs/figures.py, the script that remakes the README's figures: its montage's map finds the
box the model sums, its signal bands are the leads inside the window the model sums, its grid
is the one ``salience explain`` draws, and every picture the README and the docs show exists."""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from salience.viz import COLORBAR_INCHES, GRID_CELL_INCHES

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 300_000
"""The committed figures live in git: each stays under this."""


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("figures", ROOT / "docs" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's (width, height) from its IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_montage_map_peaks_in_the_box_the_model_sums(figures, tmp_path: Path) -> None:
    path, saliency, box = figures.volume_montage(tmp_path / "montage.png", side=16)
    assert saliency.shape == (16, 16, 16)
    peak = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    assert all(b.start <= p < b.stop for p, b in zip(peak, box, strict=True))
    # nothing outside the box's 2-voxel cells and their one-cell upsampling fringe
    outside = np.ones(saliency.shape, bool)
    outside[tuple(slice(max(b.start - 2, 0), b.stop + 2) for b in box)] = False
    assert float(np.abs(saliency[outside]).max()) == 0.0
    width, height = png_size(path)
    assert (width, height) == (1000, 340)  # the montage's 10 × 3.4 inches at 100 dpi
    assert path.stat().st_size < MAX_BYTES


def test_the_signal_bands_are_the_leads_inside_the_window(figures, tmp_path: Path) -> None:
    path, saliency, window = figures.signal_trace(tmp_path / "trace.png", length=64)
    signal, _ = figures.two_leads(64)
    # the model is linear with weight 1 in the window: Integrated Gradients from zeros is x there
    expected = np.zeros_like(signal.data)
    expected[:, window] = signal.data[:, window]
    # float32 rounding of a sum of at most 64 steps of values below 1.2: 64 * 1.2 * 2**-23 < 1e-5
    np.testing.assert_allclose(saliency, expected, rtol=0, atol=1e-5)
    assert png_size(path) == (900, 380)  # 9 × (1.2 + 1.3 per lead) inches at 100 dpi
    assert path.stat().st_size < MAX_BYTES


def test_the_cat_figure_is_the_grid_explain_draws(figures, tmp_path: Path) -> None:
    path = figures.cat_methods(tmp_path / "cat.png", ("gradcam",))
    width, _ = png_size(path)
    # the photo and one map with its colorbar, at 100 dpi
    assert width == round(2 * (GRID_CELL_INCHES + COLORBAR_INCHES) * 100)
    assert path.stat().st_size < MAX_BYTES


def test_every_picture_the_docs_show_exists() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    shown = [
        (page, target)
        for page in pages
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text(encoding="utf-8"))
    ]
    assert {"cat_methods.png", "volume_montage.png"} <= {Path(t).name for _, t in shown}
    for page, target in shown:
        image = page.parent / target
        assert image.is_file(), f"{page.name} shows {target}, which does not exist"
        assert png_size(image)[0] > 0
    for name in ("cat_methods.png", "volume_montage.png", "signal_trace.png"):  # figures.py's
        assert (ROOT / "docs" / "images" / name).stat().st_size < MAX_BYTES
