"""The sign of a map is a display mode, chosen per map: zero is the neutral colour of a signed
map (a diverging colormap, limits ±max |map|) and the low end of a magnitude's sequential scale,
in render (the command line, the batch runner, the server) and in salience.viz."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from salience import cli, viz
from salience.cli.arguments import display_from_args
from salience.explanation import Explanation
from salience.images import ImagePreset
from salience.render import DisplayOptions, render

PRESET = ImagePreset(resize_shorter=16, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3)
IMAGE = PRESET.prepare(np.full((16, 16, 3), 128, np.uint8))
ZERO, POSITIVE, NEGATIVE = (4, 4), (2, 12), (12, 2)


def _colour(cmap: str, position: float) -> np.ndarray:
    """The uint8 RGB colour matplotlib gives ``position`` on ``cmap``."""
    return np.asarray(matplotlib.colormaps[cmap](position, bytes=True)[:3])


def _explanation(saliency: torch.Tensor) -> Explanation:
    return Explanation(saliency[None, None], "test", torch.tensor([[0]]), torch.zeros(1, 1))


def _signed_channels() -> torch.Tensor:
    """A (3, 16, 16) attribution whose channel sum is 0 at ZERO, 2 at POSITIVE, -1 at NEGATIVE."""
    saliency = torch.zeros(3, 16, 16, dtype=torch.float64)
    saliency[:, ZERO[0], ZERO[1]] = torch.tensor([1.0, -0.5, -0.5])  # sums to zero, not |.|
    saliency[0, POSITIVE[0], POSITIVE[1]] = 2.0
    saliency[1, NEGATIVE[0], NEGATIVE[1]] = -1.0
    return saliency


def _overlay(saliency: torch.Tensor, **display: object) -> np.ndarray:
    options = DisplayOptions(alpha=1.0, percentile=100.0, **display)
    return render(_explanation(saliency), 0, IMAGE, options).overlay


def test_a_summed_map_shows_zero_in_the_diverging_maps_centre() -> None:
    overlay = _overlay(_signed_channels(), reduce="sum")
    # ±max |map| = ±2: zero sits at 0.5, +2 at the top, -1 a quarter up (exact colormap bins)
    assert np.array_equal(overlay[ZERO], _colour("RdBu_r", 0.5))
    assert np.array_equal(overlay[0, 0], _colour("RdBu_r", 0.5))  # the zero background too
    assert np.array_equal(overlay[POSITIVE], _colour("RdBu_r", 1.0))
    assert np.array_equal(overlay[NEGATIVE], _colour("RdBu_r", 0.25))


def test_a_non_negative_map_on_a_diverging_colormap_keeps_zero_neutral() -> None:
    cam = torch.zeros(16, 16, dtype=torch.float64)
    cam[POSITIVE] = 3.0
    overlay = _overlay(cam, cmap="RdBu_r")
    # a magnitude takes the upper half of a diverging map: zero white-ish, not the blue end
    assert np.array_equal(overlay[ZERO], _colour("RdBu_r", 0.5))
    assert np.array_equal(overlay[POSITIVE], _colour("RdBu_r", 1.0))
    assert not np.array_equal(overlay[ZERO], _colour("RdBu_r", 0.0))


def test_a_magnitude_starts_at_zero_not_at_the_maps_minimum() -> None:
    cam = torch.full((16, 16), 1.0, dtype=torch.float64)
    cam[POSITIVE] = 4.0
    overlay = _overlay(cam, cmap="gray")
    # 1 of 4 is a quarter up a scale from 0: not black, as a min-to-max stretch would draw it
    assert np.array_equal(overlay[ZERO], _colour("gray", 0.25))


@pytest.mark.parametrize(
    ("sign", "zero", "positive", "negative"),
    [
        ("absolute_value", 0.0, 1.0, 0.5),
        ("positive", 0.0, 1.0, 0.0),
        ("negative", 0.0, 0.0, 1.0),
        ("all", 0.5, 1.0, 0.25),
    ],
)
def test_each_sign_mode(sign: str, zero: float, positive: float, negative: float) -> None:
    overlay = _overlay(_signed_channels(), reduce="sum", sign=sign, cmap="viridis")
    for where, position in ((ZERO, zero), (POSITIVE, positive), (NEGATIVE, negative)):
        assert np.array_equal(overlay[where], _colour("viridis", position)), (sign, where)


def test_an_unknown_sign_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown sign 'signed'; choose one of auto, all"):
        DisplayOptions(sign="signed")


def test_one_signed_map_does_not_turn_the_others_symmetric() -> None:
    picture = np.full((16, 16, 3), 128, np.uint8)
    signed = _signed_channels().sum(0).numpy()
    magnitude = np.abs(signed)
    figure = viz.grid_figure(
        [picture], [[signed, magnitude]], row_titles=["a"], column_titles=["sum", "abs"], alpha=1.0
    )
    overlays = [axis.images[0].get_array() for axis in figure.axes if axis.images][1:]
    assert np.array_equal(overlays[0][ZERO], _colour("RdBu_r", 0.5))
    # the magnitude keeps its own scale from 0 (jet's low end), not the signed map's centre
    assert np.array_equal(overlays[1][ZERO], _colour("jet", 0.0))
    assert np.array_equal(overlays[1][POSITIVE], _colour("jet", 1.0))


def test_the_command_line_takes_sign(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["explain", "--sign", "positive", "--reduce", "sum"])
    assert display_from_args(args).sign == "positive"
    assert display_from_args(cli.build_parser().parse_args(["explain"])).sign == "auto"
    out = tmp_path / "out"
    argv = ["explain", "--model", "model_factories:seeded_digits_net", "--size", "32"]
    argv += ["--method", "gradient", "--reduce", "sum", "--quiet", "-o", str(out)]
    assert cli.main(argv) == 0
    figure = np.asarray(Image.open(out / "chelsea_gradient.png").convert("RGB"))
    # the figure's colorbar is a diverging one: its middle row is RdBu_r's neutral colour
    assert (np.abs(figure.astype(int) - _colour("RdBu_r", 0.5)).sum(-1) <= 3).any()
    sidecar = (out / "chelsea_gradient.json").read_text()
    assert "gradient" in sidecar


def test_the_server_meta_names_the_scale() -> None:
    pytest.importorskip("fastapi")
    from salience.server.service import render as render_for_page

    explanation = _explanation(_signed_channels())
    display = DisplayOptions(reduce="sum", percentile=100.0)
    served = render_for_page(explanation, 0, display.view(IMAGE), display, {0: 0.5})
    scale = served.meta["scale"]
    assert scale["sign"] == "all" and scale["cmap"] == "RdBu_r"
    assert (scale["low"], scale["high"]) == (-2.0, 2.0)
    assert io.BytesIO(served.files["overlay.png"][0]).getvalue()[:4] == b"\x89PNG"
