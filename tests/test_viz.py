"""Tests for salience.viz: colormaps, overlays, atomic PNG writing and figure grids."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from skimage import data

from salience import viz
from salience.viz import MAX_COLUMNS, colorize, grid_figure, overlay, save_grid, save_png

CAT = data.chelsea()[:60, :80].copy()  # small (60, 80, 3) uint8 crop keeps the tests fast


def _colormap_bytes(name: str, position: float) -> np.ndarray:
    return np.array(matplotlib.colormaps[name](position, bytes=True))


# --- colorize -------------------------------------------------------------------------------


def test_gray_ramp_is_monotone_from_black_to_white() -> None:
    ramp = np.linspace(0.0, 1.0, 50)[None, :]
    colours = colorize(ramp, "gray")
    assert colours.shape == (1, 50, 3)
    assert colours.dtype == np.uint8
    grey = colours[0, :, 0].astype(int)
    np.testing.assert_array_equal(colours[0, :, 0], colours[0, :, 1])
    assert (np.diff(grey) >= 0).all()
    assert grey[0] == 0
    assert grey[-1] == 255


def test_unsigned_map_is_stretched_to_its_range() -> None:
    np.testing.assert_array_equal(
        colorize(np.array([[2.0, 4.0]]), "gray"), colorize(np.array([[0.0, 1.0]]), "gray")
    )
    pinned = colorize(np.array([[2.0, 4.0]]), "gray", vmin=0.0, vmax=8.0)
    np.testing.assert_array_equal(pinned[0, 0], _colormap_bytes("gray", 0.25)[:3])
    np.testing.assert_array_equal(pinned[0, 1], _colormap_bytes("gray", 0.5)[:3])


def test_signed_map_is_symmetric_around_zero() -> None:
    signed_map = np.array([[-2.0, 0.0, 0.5, 2.0]])
    colours = colorize(signed_map)  # both signs: diverging default, symmetric scale
    np.testing.assert_array_equal(colours[0, 1], _colormap_bytes("RdBu_r", 0.5)[:3])
    np.testing.assert_array_equal(colours[0, 0], _colormap_bytes("RdBu_r", 0.0)[:3])
    np.testing.assert_array_equal(colours[0, 3], _colormap_bytes("RdBu_r", 1.0)[:3])
    # the midpoint stays at 0 even when the map is lopsided
    lopsided = colorize(np.array([[-0.1, 0.0, 3.0]]), "bwr")
    np.testing.assert_array_equal(lopsided[0, 1], _colormap_bytes("bwr", 0.5)[:3])
    # signed=True forces the symmetric scale on a positive map: 0 is still the midpoint
    forced = colorize(np.array([[0.0, 1.0]]), "bwr", signed=True)
    np.testing.assert_array_equal(forced[0, 0], _colormap_bytes("bwr", 0.5)[:3])


def test_nan_pixels_get_alpha_zero() -> None:
    colours = colorize(np.array([[0.0, np.nan, 1.0]]), "viridis")
    assert colours.shape == (1, 3, 4)
    np.testing.assert_array_equal(colours[0, :, 3], [255, 0, 255])
    np.testing.assert_array_equal(colours[0, 2], _colormap_bytes("viridis", 1.0))
    assert colorize(np.ones((2, 2)), "hot", rgba=True).shape == (2, 2, 4)


def test_unknown_colormap_is_explained() -> None:
    with pytest.raises(ValueError, match=r"unknown colormap 'virdis' \(did you mean viridis") as e:
        colorize(np.ones((2, 2)), "virdis")
    assert "jet, viridis, inferno, hot, gray, RdBu_r" in str(e.value)


def test_bad_scale_and_map_shape_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"vmin \(1\) must be less than vmax \(0\)"):
        colorize(np.ones((2, 2)), vmin=1.0, vmax=0.0)
    with pytest.raises(ValueError, match="2-D map"):
        colorize(np.ones((2, 2, 3)))


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'salience\[viz\]'"):
        colorize(np.ones((2, 2)))


# --- overlay --------------------------------------------------------------------------------


def test_overlay_alpha_extremes_and_blend() -> None:
    saliency = np.linspace(0.0, 1.0, 60 * 80).reshape(60, 80)
    np.testing.assert_array_equal(overlay(CAT, saliency, alpha=0.0), CAT)
    colours = colorize(saliency, "jet")
    np.testing.assert_array_equal(overlay(CAT, saliency, alpha=1.0), colours)
    half = overlay(CAT, saliency, alpha=0.5).astype(float)
    assert np.abs(half - (colours / 2.0 + CAT / 2.0)).max() <= 0.5


def test_overlay_keeps_the_image_at_nan_pixels() -> None:
    saliency = np.ones((60, 80))
    saliency[:10, :] = np.nan
    blended = overlay(CAT, saliency, alpha=1.0, cmap="gray")
    np.testing.assert_array_equal(blended[:10], CAT[:10])
    assert (blended[10:] == 0).all()  # constant unsigned map -> lowest colour (black)


def test_overlay_resizes_a_coarse_map() -> None:
    coarse = np.array([[0.0, 1.0]])  # left half low, right half high
    blended = overlay(CAT, coarse, alpha=1.0, cmap="gray")
    assert blended.shape == CAT.shape
    assert blended[:, 0].max() == 0
    assert blended[:, -1].min() == 255
    assert (np.diff(blended[0, :, 0].astype(int)) >= 0).all()


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan")])
def test_overlay_rejects_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be a number between 0 and 1"):
        overlay(CAT, np.ones((60, 80)), alpha=alpha)


def test_overlay_rejects_non_rgb_images() -> None:
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) RGB array; got float64"):
        overlay(CAT / 255.0, np.ones((60, 80)))


# --- save_png -------------------------------------------------------------------------------


def test_save_png_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "dir" / "cat.png"
    written = save_png(CAT, target)
    assert written == target
    with Image.open(target) as reread:
        assert reread.format == "PNG"
        np.testing.assert_array_equal(np.asarray(reread), CAT)
    assert os.listdir(target.parent) == ["cat.png"]


@pytest.mark.parametrize("failing", ["encode", "rename"])
def test_failed_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "map.png"
    save_png(CAT, target)
    before = target.read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    if failing == "encode":
        monkeypatch.setattr(Image.Image, "save", fail)
    else:
        monkeypatch.setattr(viz.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_png(np.zeros_like(CAT), target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["map.png"]


def test_save_png_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"give the output file a \.png suffix"):
        save_png(CAT, tmp_path / "cat.jpg")
    with pytest.raises(ValueError, match=r"uint8 \(H, W\), \(H, W, 3\) or \(H, W, 4\) array"):
        save_png(CAT.astype(float), tmp_path / "cat.png")


# --- save_grid ------------------------------------------------------------------------------


def _grid_size(path: Path, methods: int, rows: int = 1, **options: object) -> tuple[int, int]:
    maps = [np.linspace(0, 1, 7 * 7).reshape(7, 7) * (k + 1) for k in range(methods)]
    save_grid(
        path,
        [CAT] * rows,
        [maps] * rows,
        row_titles=[f"tabby 0.{62 - r}" for r in range(rows)],
        column_titles=[f"method {k}" for k in range(methods)],
        **options,
    )
    with Image.open(path) as written:
        assert written.format == "PNG"
        return written.size


def test_save_grid_grows_with_columns_and_rows(tmp_path: Path) -> None:
    one_width, one_height = _grid_size(tmp_path / "one.png", methods=1, dpi=50)
    three_width, three_height = _grid_size(tmp_path / "three.png", methods=3, dpi=50)
    assert three_width > one_width
    assert three_height == one_height
    _, two_rows_height = _grid_size(tmp_path / "tall.png", methods=1, rows=2, dpi=50)
    assert two_rows_height > one_height
    assert sorted(os.listdir(tmp_path)) == ["one.png", "tall.png", "three.png"]


def test_grid_figure_titles_colorbar_and_overlays() -> None:
    signed_map = np.linspace(-1, 1, 25).reshape(5, 5)
    figure = grid_figure(
        [CAT], [[signed_map]], row_titles=["cat: tabby 62.0%"], column_titles=["gradient"]
    )
    image_axis, map_axis, colorbar_axis = figure.axes
    assert image_axis.get_title() == "cat: tabby 62.0%"
    assert map_axis.get_title() == "gradient"
    assert colorbar_axis.get_ylabel() == "attribution"  # the map has both signs
    np.testing.assert_array_equal(image_axis.images[0].get_array(), CAT)
    np.testing.assert_array_equal(
        map_axis.images[0].get_array(), overlay(CAT, signed_map, cmap="RdBu_r", signed=True)
    )
    negative = grid_figure([CAT], [[-signed_map - 1]], row_titles=["a"], column_titles=["b"])
    assert negative.axes[-1].get_ylabel() == "|attribution|"


def test_a_wide_grid_wraps_and_every_map_has_a_colorbar_in_its_units() -> None:
    maps = [np.linspace(0, 0.003 * (k + 1), 49).reshape(7, 7) for k in range(9)]
    figure = grid_figure(
        [CAT], [maps], row_titles=["cat"], column_titles=[f"cam {k}" for k in range(9)]
    )
    shown = [axis for axis in figure.axes if axis.images]
    colorbars = [axis for axis in figure.axes if not axis.images and axis.get_ylabel()]
    assert len(shown) == 10 and len(colorbars) == 9
    cells = [axis.get_subplotspec() for axis in shown]
    columns = {cell.colspan.start for cell in cells}
    rows = {cell.rowspan.start for cell in cells}
    assert len(columns) == MAX_COLUMNS and len(rows) == 3  # 10 panels, 4 a row
    figure.canvas.draw()
    width, height = figure.canvas.get_width_height()
    assert width < 2 * height  # not one long strip
    last = colorbars[-1]
    ticks = last.get_yticks()
    low, high = last.get_ylim()
    assert (low, high) == pytest.approx((0.0, 0.027))  # the last map's own range, not [0, 1]
    labels = [label.get_text() for label in last.get_yticklabels() if label.get_text()]
    assert len(labels) >= 2 and max(ticks[(ticks >= low) & (ticks <= high)]) > 0.02


def test_overlay_takes_grayscale_images_and_refuses_channel_maps() -> None:
    gray = CAT[..., 0]
    assert np.array_equal(overlay(gray, np.ones((60, 80)), alpha=0.0), np.stack([gray] * 3, -1))
    assert overlay(gray[..., None], np.ones((6, 8))).shape == (60, 80, 3)
    with pytest.raises(ValueError, match="reduce the channels"):
        overlay(CAT, np.ones((3, 60, 80)))


def test_save_grid_checks_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="row 0 has 2 maps but column_titles names 1 methods"):
        save_grid(
            tmp_path / "bad.png",
            [CAT],
            [[np.ones((3, 3)), np.ones((3, 3))]],
            row_titles=["cat"],
            column_titles=["only one"],
        )
    with pytest.raises(ValueError, match="row_titles has 0 titles for 1 images"):
        save_grid(tmp_path / "bad.png", [CAT], [[]], row_titles=[], column_titles=[])
    assert not (tmp_path / "bad.png").exists()
