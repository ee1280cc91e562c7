"""The notebook in docs/ runs from top to bottom on the bundled model, and an Explanation shows
itself in notebooks: a short repr, a PNG figure, HTML, and ``overlay(image)`` in one call."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import salience
from salience.explanation import Explanation
from salience.images import ImagePreset

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "explain.ipynb"
PRESET = ImagePreset(resize_shorter=16, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3)


def _explanation() -> Explanation:
    saliency = torch.zeros(2, 1, 3, 16, 16)
    saliency[0, 0, :, 4, 4] = torch.tensor([1.0, -3.0, 0.5])
    return Explanation(
        saliency,
        "gradient",
        torch.tensor([[3], [1]]),
        torch.tensor([[0.25], [0.5]]),
        score_kind="probability",
        target_names=(("tabby",), ("lynx",)),
        params={"absolute": False},
    )


def test_an_explanation_has_a_short_repr_a_png_and_html() -> None:
    explanation = _explanation()
    text = repr(explanation)
    assert text.startswith("<Explanation gradient: 2 input(s) × 1 target(s) [tabby]")
    assert len(text) < 200 and "tensor" not in text
    png = explanation._repr_png_()
    figure = Image.open(io.BytesIO(png))
    assert figure.format == "PNG" and min(figure.size) >= 200
    html = explanation._repr_html_()
    assert html.count("data:image/png;base64,") == 1 and "&lt;Explanation gradient" in html


def test_overlay_reduces_channels_maps_the_crop_back_and_colours_in_one_call() -> None:
    photo = np.full((20, 32, 3), 100, np.uint8)
    image = PRESET.prepare(photo)
    explanation = _explanation()
    drawn = explanation.overlay(image, alpha=1.0, cmap="gray", percentile=100.0)
    assert drawn.shape == (20, 32, 3)  # on the photo, not on the model's 16 × 16 crop
    assert np.array_equal(drawn[:, :2], photo[:, :2])  # outside the crop: the photo itself
    gray = explanation.overlay(photo[..., 0], sample=1)
    assert gray.shape == (20, 32, 3)
    with pytest.raises(ValueError, match="sample 2 is out of range"):
        explanation.overlay(photo, sample=2)


def _kernel(tmp_path: Path) -> str:
    """A kernel spec of this very interpreter (and this checkout's salience), in ``tmp_path``."""
    name = "salience-notebook-test"
    folder = tmp_path / "kernels" / name
    folder.mkdir(parents=True)
    source = str(Path(salience.__file__).resolve().parents[1])
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "salience test",
        "language": "python",
        "env": {"PYTHONPATH": source, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    return name


@pytest.mark.slow
def test_the_notebook_runs_and_tells_the_story(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=_kernel(tmp_path),
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    streams = [out for out in outputs if out.output_type == "stream" and out.name == "stdout"]
    text = "".join(out.text for out in streams)
    first = text.splitlines()[0]
    assert first.startswith(("Egyptian cat", "tabby", "tiger cat")), first  # a cat, first
    assert "Spearman" in text and "gradient: changes with the model" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 7  # the repr, six figures on the photo and the sanity figure
    htmls = [out for out in outputs if "text/html" in out.get("data", {})]
    assert any("&lt;Explanation gradient" in out["data"]["text/html"] for out in htmls)
