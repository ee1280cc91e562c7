"""Errors of the ``salience`` command: options refused before any work, one line for what the
user can fix (bad options, a model that raises, a dead worker), tracebacks for salience's bugs,
and files that appear whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salience import cli, viz
from salience.explanation import Explanation

FACTORY = "model_factories:seeded_digits_net"
SMALL = ["--size", "32", "--quiet"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The exit status, stdout and stderr."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1, err
    assert err.startswith("salience: error: "), err
    return err


def photos(folder: Path, **values: int) -> list[str]:
    """Plain 40×48 photos of one grey level each, named by the keywords."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, value in values.items():
        path = folder / f"{name}.png"
        Image.fromarray(np.full((40, 48, 3), value, np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a model fails the test: the command line must be refused before."""

    import salience.loading
    import salience.runner.work

    def opened(*_args: object, **_kwargs: object) -> None:
        pytest.fail("the model was opened before the options were checked")

    for module in (salience.loading, salience.runner.work):
        monkeypatch.setattr(module, "open_model", opened)


BAD_OPTIONS = {
    "percentile above 100": (["--percentile", "500"], ["--percentile", "(0, 100]"]),
    "unknown reduction": (["--reduce", "nonsense"], ["--reduce", "'nonsense'", "abs_max, abs_sum"]),
    "negative smoothing": (["--smooth", "-3"], ["--smooth", ">= 0", "-3"]),
    "negative class index": (["--target", "-1"], ["--target", "class index -1", "from 0"]),
    "top-0": (["--target", "top-0"], ["--target", "K >= 1"]),
    "opacity above 1": (["--alpha", "1.5"], ["--alpha", "[0, 1]"]),
    "no samples": (["--samples", "0"], ["--samples", ">= 1"]),
    "negative seed": (["--seed", "-2"], ["--seed", ">= 0"]),
    "unknown baseline": (["--baseline", "noise"], ["--baseline", "zeros"]),
    "scale of 1/0": (["--scale", "1/0"], ["--scale", "'1/0' is not a number"]),
    "unknown colormap": (["--cmap", "jett"], ["unknown colormap 'jett'", "jet"]),
    "unknown method": (["--method", "gradient,smothgrad"], ["'smothgrad'", "smoothgrad"]),
    "no method": (["--method", ","], ["at least one method"]),
    "stride past the window": (
        ["--method", "gradient,occlusion", "--window", "2", "--stride", "8"],
        ["stride 8 is larger than its window 2", "a stride of at most 2", "window of at least 8"],
    ),
    "missing image": (["no-such.png"], ["no-such.png is no file", "chelsea"]),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_options_are_refused_in_one_line_before_the_model_opens(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    argv, fragments = BAD_OPTIONS[case]
    out = tmp_path / "out"
    status, _, err = run(capsys, "explain", *argv, "-o", str(out), *SMALL)
    assert status == 2
    for fragment in one_line_error(err), *fragments:
        assert fragment in err
    assert not out.exists()  # nothing written


def test_an_output_that_is_a_file_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("a file")
    for output in (existing, existing / "inside"):
        for command in (["explain"], ["batch", str(tmp_path)], ["compare"], ["evaluate"]):
            status, _, err = run(capsys, *command, "-o", str(output))
            assert status == 2, command
            assert "-o/--output" in one_line_error(err)
            assert f"{existing} " in err and "is a file, not a folder" in err
    assert existing.read_text() == "a file"


def test_a_model_failing_on_the_second_image_leaves_whole_files_of_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = photos(tmp_path, dark=20, bright=235, dim=40)
    out = tmp_path / "out"
    argv = ["explain", *images, "--model", "model_factories:fragile_digits_net"]
    status, _, err = run(capsys, *argv, "--method", "gradient,gradcam", "-o", str(out), *SMALL)
    assert status == 2
    one_line_error(err)
    assert "the model raised RuntimeError on bright: cannot explain bright images" in err
    assert "second line" not in err and "--debug" in err and "1 image(s) before it" in err

    methods, suffixes = ("gradient", "gradcam"), (".npz", ".json", ".png")
    names = {f"dark_{method}{suffix}" for method in methods for suffix in suffixes}
    assert set(os.listdir(out)) == names | {"grid.png"}  # no file of bright, none half-written
    for method in methods:
        assert Explanation.load(out / f"dark_{method}").attributions.shape[-2:] == (32, 32)
        width, height = Image.open(out / f"dark_{method}.png").size  # titled, with a colorbar
        assert width == 48 + viz.COLORBAR_PIXELS and height >= 40
    assert Image.open(out / "grid.png").size[0] > 0


def test_debug_shows_the_traceback_of_an_error_of_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (bright,) = photos(tmp_path, bright=235)
    argv = [bright, "--model", "model_factories:fragile_digits_net", "--method", "gradient"]
    status, _, err = run(capsys, "--debug", "explain", *argv, "-o", str(tmp_path / "a"), *SMALL)
    assert status == 2
    assert "Traceback (most recent call last)" in err and "model_factories.py" in err
    assert err.splitlines()[-1].startswith("salience: error: the model raised RuntimeError")

    monkeypatch.setenv("SALIENCE_DEBUG", "1")
    status, _, err = run(capsys, "explain", *argv, "-o", str(tmp_path / "b"), *SMALL)
    assert status == 2 and "Traceback (most recent call last)" in err


def test_a_factory_that_returns_no_model_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    status, _, err = run(capsys, "explain", "--model", "model_factories:not_a_model", "-o", out)
    assert status == 2
    assert "model_factories:not_a_model returned a str" in one_line_error(err)
    assert "torch.nn.Module" in err
    status, _, err = run(
        capsys, "explain", "--model", "model_factories:not_a_model", "--debug", "-o", out
    )
    assert status == 2 and "Traceback (most recent call last)" in err


def test_a_bug_keeps_its_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import salience.postprocess

    def broken(*_args: object, **_kwargs: object) -> None:
        int("not a number")  # a ValueError that no one raised on purpose: a bug

    monkeypatch.setattr(salience.postprocess, "display_values", broken)
    (dark,) = photos(tmp_path, dark=20)
    with pytest.raises(ValueError, match="invalid literal") as info:
        cli.main(["explain", dark, "--model", FACTORY, "-o", str(tmp_path / "out"), *SMALL])
    assert "(while explaining dark)" in getattr(info.value, "__notes__", [])


def test_a_dead_batch_worker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    photos(tmp_path / "images", dark=20, dim=40)
    status, _, err = run(
        capsys,
        "batch",
        str(tmp_path / "images"),
        "--model",
        "model_factories:dying_digits_net",
        "--size",
        "32",
        "--workers",
        "1",
        "--quiet",
        "-o",
        str(tmp_path / "out"),
    )
    assert status == 2
    assert "a worker process died (exit code -9" in one_line_error(err)
    assert "re-run the same command to resume" in err
