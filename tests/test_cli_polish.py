"""The command's polish: every default in --help, one explanation in the singular, a folder
pointed to ``salience batch``, class names suggested by the word they contain."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salience import cli
from salience.targets import TargetError, parse_target
from salience.zoo import imagenet_class_names

FACTORY = "model_factories:seeded_digits_net"


def _explain_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser("explain")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["explain"]


def test_help_states_every_default_and_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _explain_parser()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default is None or default is False:
            continue
        if default == argparse.SUPPRESS:
            continue
        said = f"(default: {default})" in text or "default" in (action.help or "").lower()
        assert said, f"{action.option_strings[0]} does not say its default {default!r}"
    assert "--score {logit,probability}" in text and "(default: logit)" in text
    assert "abs_max (default), abs_sum, l2, sum, max" in text


def test_one_explanation_is_singular_and_a_folder_points_to_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    common = ["--model", FACTORY, "--size", "32", "--quiet", "--method", "gradient"]
    assert cli.main(["explain", str(image), *common, "-o", str(tmp_path / "out")]) == 0
    assert "wrote 1 explanation and " in capsys.readouterr().out

    assert cli.main(["explain", str(tmp_path), *common, "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"salience batch {tmp_path}" in err


def test_a_word_suggests_the_class_names_that_contain_it() -> None:
    with pytest.raises(TargetError) as error:
        parse_target("cat", imagenet_class_names())
    message = str(error.value)
    assert "'Egyptian cat'" in message and "'tiger cat'" in message
    assert "crate" not in message  # look-alikes only when no name has the word
    with pytest.raises(TargetError, match="'dingo'"):
        parse_target("dgo", imagenet_class_names())


def test_progress_on_a_log_has_no_cursor_escapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # four images of one sampled method: the command's bar, and the method's bar under it;
    # on an output that is not a terminal only the command's is drawn, with no "ESC [A"
    images = []
    for i in range(4):
        images.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(images[-1])
    argv = ["explain", *images, "--model", FACTORY, "--size", "32", "--method", "smoothgrad"]
    assert cli.main([*argv, "--samples", "4", "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "explaining" in err and "4/4" in err
    assert "\x1b[A" not in err


def test_the_json_sidecar_records_source_probability_and_display(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import torch

    from salience.loading import LoadOptions, open_model

    image = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32, 3), 70, np.uint8)).save(image)
    argv = ["explain", str(image), "--model", FACTORY, "--size", "32", "--quiet"]
    out = tmp_path / "out"
    assert cli.main([*argv, "--method", "gradient", "--cmap", "viridis", "-o", str(out)]) == 0
    sidecar = json.loads((out / "grey_gradient.json").read_text())
    assert sidecar["source"] == str(image.resolve())
    assert sidecar["display"]["cmap"] == "viridis" and sidecar["display"]["percentile"] == 99.0
    loaded = open_model(FACTORY, LoadOptions(size=32))
    x = loaded.preset.prepare(str(image)).tensor
    probabilities = torch.softmax(loaded.adapter.forward(x), dim=1)[0]
    (explained,) = sidecar["targets"][0]
    # the same float32 forward pass: equal to a few ulps of a probability
    assert sidecar["probability"] == [pytest.approx(float(probabilities[explained]), abs=1e-6)]
