"""The ``salience`` command end to end: real model, real photo, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salience import viz
from salience.cli import main
from salience.registry import available

CAT_CLASSES = range(281, 286)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


COMMAND_GROUPS = ("arguments", "batch", "catalog", "checks", "explain", "reporting", "serve")


def test_the_command_groups_import_and_help_start_without_torch() -> None:
    """Each command group is a module of the cli package; none of them imports torch, and
    ``python -m salience.cli --help`` lists every command without it."""
    modules = ", ".join(f"salience.cli.{group}" for group in COMMAND_GROUPS)
    code = (
        f"import sys, {modules}\n"
        "from salience.cli import build_parser\n"
        "text = build_parser('').format_help()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]\n"
        "print(text)"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert found.returncode == 0, found.stderr
    for command in ("explain", "layers", "evaluate", "sanity", "compare", "serve", "batch"):
        assert command in found.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "salience.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: salience")


def test_methods_and_models_list_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "methods")
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()] == available("method")
    status, out, _ = run(capsys, "models")
    assert status == 0 and out.startswith("efficientnet_lite0")


def test_explain_the_bundled_cat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys,
        "explain",
        "--method",
        "gradient,gradient_x_input",
        "--target",
        "top-2",
        "-o",
        str(tmp_path),
        "--quiet",
    )
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("chelsea: top-5")
    first_class = int(lines[1].rsplit("class ", 1)[1].rstrip(")"))
    assert first_class in CAT_CLASSES
    written = sorted(p.name for p in tmp_path.iterdir())
    for method in ("gradient", "gradient_x_input"):
        meta = json.loads((tmp_path / f"chelsea_{method}.json").read_text())
        # the figures are named by rank and class: "Egyptian cat" gives "egyptian-cat"
        first_name = meta["target_names"][0][0].lower().replace(" ", "-")
        assert meta["figures"][0] == f"chelsea_{method}_top1_{first_name}.png"
        assert meta["figures"][1].startswith(f"chelsea_{method}_top2_")
        assert set(meta["figures"]) <= set(written)
        assert meta["model"] == "efficientnet_lite0" and meta["method"] == method
        assert meta["shape"] == [1, 2, 3, 224, 224]
        assert meta["targets"][0][0] == first_class
        assert meta["target_names"][0][0] in lines[1]
    assert "grid.png" in written
    figure = np.asarray(Image.open(tmp_path / f"chelsea_gradient_top1_{first_name}.png"))
    # the original photo's geometry, not the 224 crop, under a title and beside a colorbar
    assert figure.shape[1] == 451 + viz.COLORBAR_PIXELS and figure.shape[0] >= 300


def write_text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "smothgrad"], "unknown method 'smothgrad'. Did you mean smoothgrad"),
        (["--target", "1000"], "class index 1000 is out of range"),
        (["--target", "tabbby"], "did you mean 'tabby'"),
        (["--cmap", "jett"], "jett"),
        (["--alpha", "1.5"], "--alpha: must be in [0, 1]"),
        (["--model", "resnet"], "unknown model 'resnet'"),
    ],
)
def test_bad_arguments_give_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "explain", "--method", "gradient", *argv, "-o", str(tmp_path))
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("salience: error: ")
    assert message in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_bad_image_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = write_text_file(tmp_path)
    status, _, err = run(capsys, "explain", str(text), "-o", str(tmp_path / "out"))
    assert status == 2 and "is not an image" in err and err.count("\n") == 1
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    status, _, err = run(capsys, "explain", str(tmp_path / "cut.jpg"), "-o", str(tmp_path / "o"))
    assert status == 2 and "cut.jpg" in err and err.count("\n") == 1
    status, _, err = run(capsys, "explain", str(tmp_path / "missing.png"), "-o", str(tmp_path))
    assert status == 2 and "missing.png" in err


def test_black_box_methods_take_their_options_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(
        capsys,
        "explain",
        "--method",
        "occlusion,rise",
        "--window",
        "112",
        "--stride",
        "56",
        "--masks",
        "16",
        "--baseline",
        "mean",
        "-o",
        str(tmp_path),
        "--quiet",
    )
    assert status == 0, err
    occlusion = json.loads((tmp_path / "chelsea_occlusion.json").read_text())
    assert occlusion["params"] == {"window": 112, "stride": 56, "baseline": "mean"}
    assert occlusion["shape"] == [1, 1, 224, 224]
    rise = json.loads((tmp_path / "chelsea_rise.json").read_text())
    assert rise["params"]["n_masks"] == 16 and rise["params"]["seed"] == 0
