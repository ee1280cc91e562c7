"""``salience compare`` over a folder: per image the maps side by side with their agreement, and
over the folder how often the methods agree, checked against the similarity functions.

The model is linear, ``logit₀ = Σ w ⊙ x`` with ``w`` growing down the rows, so its gradient is
``w`` on every image and gradient × input is ``w ⊙ x``. On an image of one grey level (the same
value in every channel after normalization) both rank the pixels the same way: Spearman 1, IoU 1.
On an image that darkens down the rows faster than ``w`` grows, ``w ⊙ x`` falls where ``w`` rises:
the two disagree, with a rank correlation near −1.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from salience.cli import main
from salience.evaluation.agreement import AGREE_AT, DISAGREE_BELOW
from salience.evaluation.similarity import comparable, spearman, top_k_iou
from salience.loading import LoadOptions, open_model

SIDE = 8
MEAN, STD = 0.5, 0.25
FLAGS = ("--size", str(SIDE), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")


class RowWeighted(nn.Module):
    """Two logits, ±Σ w ⊙ x, with w = row index + 1 (the same in every channel and column)."""

    def __init__(self) -> None:
        super().__init__()
        rows = torch.arange(1, SIDE + 1, dtype=torch.float32)
        self.register_buffer("w", rows.view(1, SIDE, 1).expand(3, SIDE, SIDE).contiguous())

    def forward(self, x: Tensor) -> Tensor:
        logit = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([logit, -logit], dim=1)


def grey(level: int) -> np.ndarray:
    return np.full((SIDE, SIDE, 3), level, dtype=np.uint8)


def darkening() -> np.ndarray:
    """Rows whose normalized value falls like 1/(row + 1)²: (row + 1) · x falls down the rows."""
    x = 2.0 / np.arange(1, SIDE + 1) ** 2  # normalized values, from 2 (white) down
    levels = np.round((x * STD + MEAN) * 255).astype(np.uint8)
    return np.repeat(levels[:, None, None], SIDE, axis=1).repeat(3, axis=2)


IMAGES = {"grey200": grey(200), "grey160": grey(160), "dark": darkening()}
NESTED = "grey160"
"""The image in a subfolder: folders are read recursively."""


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    for name, pixels in IMAGES.items():
        place = folder / "sub" if name == NESTED else folder
        Image.fromarray(pixels).save(place / f"{name}.png")
    model = root / "rows.pt"
    torch.jit.save(torch.jit.script(RowWeighted()), model)
    return folder, model


def expected_agreement(model: Path, image: Path) -> tuple[float, float]:
    """Spearman and top-10% IoU of gradient and gradient × input, by autograd on the prepared
    image and the similarity functions."""
    loaded = open_model(str(model), LoadOptions(size=SIDE, mean=(MEAN,) * 3, std=(STD,) * 3))
    x = loaded.preset.prepare(str(image)).tensor.double().requires_grad_(True)
    net = RowWeighted().double()
    (gradient,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
    maps = [gradient[0], (gradient * x)[0].detach()]
    shown = [comparable(m, (SIDE, SIDE), signed=False) for m in maps]
    return spearman(*shown), top_k_iou(*shown, 0.1)


@pytest.fixture(scope="module")
def compared(
    setting: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    folder, model = setting
    out = tmp_path_factory.mktemp("out")
    arguments = ["compare", str(folder), "--model", str(model), *FLAGS, "-o", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main([*arguments, "--method", "gradient,gradient_x_input", "--quiet"])
    assert status == 0
    return out, printed.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_image_gets_its_maps_side_by_side_and_its_agreement(
    setting: tuple[Path, Path], compared: tuple[Path, str]
) -> None:
    out, _ = compared
    for name in IMAGES:
        assert (out / f"{name}_compare.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{name}_agreement.json").is_file()


def test_the_table_holds_the_similarities_of_each_image(
    setting: tuple[Path, Path], compared: tuple[Path, str]
) -> None:
    folder, model = setting
    out, _ = compared
    rows = {row["image"]: row for row in read_csv(out / "agreement_summary_images.csv")}
    assert set(rows) == set(IMAGES)
    for name in IMAGES:
        path = folder / "sub" / f"{name}.png" if name == NESTED else folder / f"{name}.png"
        rank, overlap = expected_agreement(model, path)
        # float32 maps against float64 ones: the same ranks, so the same statistics
        assert float(rows[name]["spearman"]) == pytest.approx(rank, abs=1e-6)
        assert float(rows[name]["iou"]) == pytest.approx(overlap, abs=1e-12)
    for name in ("grey200", "grey160"):  # identical ranks
        assert float(rows[name]["spearman"]) == pytest.approx(1.0, abs=1e-12)
        assert float(rows[name]["iou"]) == 1.0
    for name in ("dark",):  # reversed ranks
        assert float(rows[name]["spearman"]) < -0.9
        assert float(rows[name]["iou"]) == 0.0


def test_the_summary_says_how_often_the_pair_agrees(compared: tuple[Path, str]) -> None:
    out, _ = compared
    images = read_csv(out / "agreement_summary_images.csv")
    rank = np.array([float(row["spearman"]) for row in images])
    overlap = np.array([float(row["iou"]) for row in images])
    (pair,) = read_csv(out / "agreement_summary.csv")
    assert (pair["a"], pair["b"], pair["images"]) == ("gradient", "gradient_x_input", "3")
    assert float(pair["spearman_mean"]) == pytest.approx(rank.mean(), abs=1e-12)
    assert float(pair["spearman_min"]) == rank.min()
    assert float(pair["iou_median"]) == pytest.approx(np.median(overlap), abs=1e-12)
    assert float(pair["agree"]) == float((rank >= AGREE_AT).mean()) == pytest.approx(2 / 3)
    assert float(pair["disagree"]) == float((rank < DISAGREE_BELOW).mean()) == pytest.approx(1 / 3)
    summary = json.loads((out / "agreement_summary.json").read_text())
    assert summary["pairs"][0]["agree"] == float(pair["agree"]) and len(summary["images"]) == 3
    assert (out / "agreement_summary.png").read_bytes()[:4] == b"\x89PNG"


def test_the_summary_is_printed(compared: tuple[Path, str]) -> None:
    _, printed = compared
    summary = printed[printed.index("agreement over 3 images") :].splitlines()
    assert summary[1].split()[:2] == ["method", "vs"]
    cells = summary[2].split()
    assert cells[:2] == ["gradient", "gradient_x_input"]
    assert cells[-2:] == ["67%", "33%"]  # agree on the grey images, disagree on the dark one


def test_a_folder_without_images_is_refused_in_one_line(
    setting: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any model opens."""
    _, model = setting
    empty = tmp_path / "empty"
    empty.mkdir()
    status = main(["compare", str(empty), "--model", str(model), *FLAGS, "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "holds no images" in err
