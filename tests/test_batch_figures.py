"""A batch job's per-method figures are the ones ``salience explain`` draws (the overlay under a
title naming the image, the class, its probability, the method and its key options, with a
colorbar in map units), and the thumbnails of ``index.html`` are captioned with the method, the
class and its probability."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salience import viz
from salience.cli import main
from salience.explanation import Explanation
from salience.render import draw
from test_batch import MODEL, make_images


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("job")
    make_images(folder / "images", 2)
    argv = ["batch", str(folder / "images"), "--model", MODEL, "--size", "32", "--quiet"]
    argv += ["--method", "gradient,smoothgrad", "--samples", "3", "--workers", "1"]
    assert main([*argv, "-o", str(folder / "out")]) == 0
    return folder / "out"


def test_each_figure_is_titled_with_image_class_probability_method_and_options(job: Path) -> None:
    for item in sorted((job / "items").iterdir()):
        record = json.loads((item / "record.json").read_text())
        assert record["explained"] == [record["predicted"]]  # the default target
        expected = f"{item.name}: {record['predicted_class']} {record['probability']:.1%}"
        for method in ("gradient", "smoothgrad"):
            heading = record["titles"][f"{method}.png"].splitlines()
            assert heading[0] == expected
            assert heading[1].startswith(f"{method} (")
        assert "n_samples=3" in record["titles"]["smoothgrad.png"]


def test_each_figure_is_its_overlay_beside_a_colorbar(job: Path) -> None:
    item = sorted((job / "items").iterdir())[0]
    record = json.loads((item / "record.json").read_text())
    heading = record["titles"]["gradient.png"]
    figure = _pixels(item / "gradient.png")
    thumb = _pixels(item / "gradient.thumb.png")  # the overlay's thumbnail: 48 × 40 fits in 128
    height, width = thumb.shape[:2]
    top = viz.title_pixels(heading)
    assert figure.shape[:2] == (max(height, 64) + top + 6, width + viz.COLORBAR_PIXELS)
    np.testing.assert_array_equal(figure[top : top + height, :width], thumb)
    beside = figure[top : top + height, width:]
    assert (beside != 255).any()  # the colorbar and its numbers, right of the overlay


def test_the_figure_has_one_colorbar_axes_in_map_units() -> None:
    explanation = Explanation(
        attributions=torch.linspace(-1, 2, 36).reshape(1, 1, 6, 6),
        method="gradient",
        targets=torch.tensor([[0]]),
        scores=torch.tensor([[1.0]]),
    )
    rendering = draw(explanation, np.zeros((6, 6, 3), np.uint8))
    figure = rendering.figure("x.png: cat 50.0%\ngradient")
    (colorbar,) = figure.axes
    assert colorbar.get_ylabel() == rendering.scale.label
    assert colorbar.get_ylim() == pytest.approx((rendering.scale.low, rendering.scale.high))
    assert [text.get_text() for text in figure.texts] == ["x.png: cat 50.0%\ngradient"]


def test_index_thumbnails_are_captioned_with_method_class_and_probability(job: Path) -> None:
    page = (job / "index.html").read_text()
    for item in sorted((job / "items").iterdir()):
        record = json.loads((item / "record.json").read_text())
        head = record["titles"]["gradient.png"].splitlines()[0].split(": ", 1)[1]
        caption = f"gradient: {head}"
        assert record["captions"]["gradient"] == caption
        assert f"<figcaption>{html.escape(caption)}</figcaption>" in page


def test_a_caption_is_escaped_and_a_missing_one_is_the_methods_name() -> None:
    from salience.runner.index import render_index

    row = {
        "key": "a.png",
        "path": "/images/a.png",
        "status": "done",
        "predicted_class": "cat",
        "probability": 0.5,
        "label_class": None,
        "correct": None,
        "seconds": 0.1,
        "error": None,
    }
    captions = {"a.png": {"gradient": "gradient: <cat> 50.0%"}}
    page = render_index(
        [row], methods=["gradient", "gradcam"], model="m", auc=False, captions=captions
    )
    assert "<figcaption>gradient: &lt;cat&gt; 50.0%</figcaption>" in page
    assert "<figcaption>gradcam</figcaption>" in page
