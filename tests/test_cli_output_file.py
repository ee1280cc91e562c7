"""``salience explain -o cat.png``: one image and one method write that figure, with its raw
map and sidecar beside it under the same stem; several figures into one file are refused
before any work, in one line that says to give a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salience import cli
from salience.explanation import Explanation

FACTORY = "model_factories:seeded_digits_net"
COMMON = ["--model", FACTORY, "--size", "32", "--quiet"]


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(np.full((32, 32, 3), 60 + 80 * i, np.uint8)).save(paths[-1])
    return paths


def test_one_image_and_method_write_the_named_figure(
    tmp_path: Path, images: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    figure = tmp_path / "figures" / "cat.png"
    figure.parent.mkdir()
    figure.write_bytes(b"an older figure")  # -o may name a file that is there: replaced
    argv = ["explain", images[0], *COMMON, "--method", "gradient", "-o", str(figure)]
    assert cli.main(argv) == 0
    assert f"wrote 1 explanation to {figure}" in capsys.readouterr().out
    assert sorted(path.name for path in figure.parent.iterdir()) == [
        "cat.json",
        "cat.npz",
        "cat.png",
    ]
    with Image.open(figure) as drawn:
        assert drawn.format == "PNG" and min(drawn.size) > 32  # the titled figure
    sidecar = json.loads((figure.parent / "cat.json").read_text())
    assert sidecar["method"] == "gradient"
    assert sidecar["source"] == str(Path(images[0]).resolve())
    explanation = Explanation.load(figure.parent / "cat.npz")
    assert explanation.method == "gradient"


@pytest.mark.parametrize(
    ("count", "methods"), [(2, "gradient"), (1, "gradient,smoothgrad"), (2, "gradient,gradcam")]
)
def test_several_figures_into_one_file_are_refused(
    tmp_path: Path,
    images: list[str],
    capsys: pytest.CaptureFixture[str],
    count: int,
    methods: str,
) -> None:
    figure = tmp_path / "cat.png"
    argv = ["explain", *images[:count], *COMMON, "--method", methods, "-o", str(figure)]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "give -o a folder" in captured.err
    assert captured.out == ""  # refused before any prediction was printed
    assert not figure.exists() and not (tmp_path / "cat").exists()


def test_a_folder_named_like_a_png_stays_a_folder(tmp_path: Path, images: list[str]) -> None:
    folder = tmp_path / "maps.png"
    folder.mkdir()
    argv = ["explain", *images, *COMMON, "--method", "gradient", "-o", str(folder)]
    assert cli.main(argv) == 0
    assert (folder / "grid.png").is_file() and (folder / "im1_gradient.png").is_file()
