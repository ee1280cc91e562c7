"""The outputs README.md quotes are what the code gives today: each quoted output is parsed out
of the README and compared with the output of the command or call it is quoted for, on the
bundled model and photo (``make demo``'s ``chelsea``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

import salience
from salience import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PREDICTION = re.compile(r"^\s+(\d+)\. (.+?)\s+(\d+\.\d)%\s+\(class (\d+)\)$")


@pytest.fixture(scope="module")
def bundled() -> tuple[Any, Any, Any]:
    """The bundled model, its spec and the demo photo prepared for it."""
    spec = salience.zoo.model_spec()
    image = spec.preset.prepare(salience.zoo.SAMPLE_IMAGES["chelsea"]())
    return salience.load_model(), spec, image


def _quoted_block(after: str) -> list[str]:
    """The lines of the first fenced block after the sentence ``after``."""
    start = README.index(after)
    block = re.search(r"```\n(.*?)```", README[start:], flags=re.DOTALL)
    assert block is not None, f"no quoted output after {after!r}"
    return block.group(1).splitlines()


def _commented(code: str) -> str:
    """The comment the README writes after ``code`` in its Python examples."""
    found = re.search(re.escape(code) + r"\s+# (.+)$", README, flags=re.MULTILINE)
    assert found is not None, f"README quotes no output for {code}"
    return found.group(1)


@pytest.mark.slow
def test_the_demo_prints_the_predictions_the_readme_quotes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quoted = _quoted_block("`make demo` prints something like")
    header, *ranks = [line for line in quoted if line.strip() != "..."]
    assert ranks, "the README quotes no prediction"
    # make demo runs `salience explain` on chelsea; its predictions do not depend on the method
    argv = ["explain", "--method", "gradient", "--quiet", "-o", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == header
    for line in ranks:
        rank, name, percent, index = PREDICTION.match(line).groups()  # type: ignore[union-attr]
        got = PREDICTION.match(printed[int(rank)])
        assert got is not None, printed[int(rank)]
        assert got.groups() == (rank, name, percent, index), f"README: {line!r}"
        assert printed[int(rank)] == line  # the same columns too


@pytest.mark.slow
def test_the_python_examples_quote_what_the_calls_return(bundled: tuple[Any, Any, Any]) -> None:
    model, spec, image = bundled
    explanation = salience.explain(
        model, image.tensor, method="gradient", target="top-3", class_names=spec.class_names()
    )  # the top-3 targets come from the model's output, whichever the method
    assert explanation.target_names == ast.literal_eval(_commented("explanation.target_names"))
    cams = salience.explain_all(model, image.tensor, ["gradcam"], layer="_blocks.15")
    info = ast.literal_eval(_commented('cams["gradcam"].info'))
    assert {key: cams["gradcam"].info[key] for key in info} == info
    shape = _commented('cams["gradcam"].attributions').split(":")[0]
    assert tuple(cams["gradcam"].attributions.shape) == ast.literal_eval(shape)


@pytest.mark.slow
def test_the_default_cam_layer_is_the_one_the_readme_names(bundled: tuple[Any, Any, Any]) -> None:
    model, _, image = bundled
    found = re.search(r"\(`([\w.]+)`, (\d+)×(\d+)×(\d+), for the bundled model\)", README)
    assert found is not None
    layer, *sizes = found.groups()
    info = salience.explain(model, image.tensor, method="gradcam").info
    assert (info["layer"], info["feature_shape"]) == (layer, [int(size) for size in sizes])
