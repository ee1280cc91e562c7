"""Saving and loading explanations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import salience
from conftest import SmallCNN, SoftplusNet
from salience.api import method_options
from salience.explanation import Explanation


def test_round_trip(tmp_path: Path) -> None:
    explanation = salience.explain(
        SoftplusNet(),
        torch.randn(2, 10),
        method="integrated_gradients",
        steps=4,
        target="top-2",
        class_names=["a", "b", "c"],
    )
    npz, sidecar = explanation.save(tmp_path / "out" / "ig")
    meta = json.loads(sidecar.read_text())
    assert meta["method"] == "integrated_gradients" and meta["params"]["steps"] == 4
    assert len(meta["target_names"]) == 2 and len(meta["target_names"][0]) == 2
    loaded = Explanation.load(npz)
    assert torch.equal(loaded.attributions, explanation.attributions)
    assert torch.equal(loaded.targets, explanation.targets)
    assert loaded.target_names == explanation.target_names
    assert loaded.info["steps"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ig.json", "ig.npz"]


def test_failed_save_leaves_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explanation = salience.explain(SoftplusNet(), torch.randn(1, 10))
    npz, _ = explanation.save(tmp_path / "map")
    original = npz.read_bytes()

    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("numpy.savez_compressed", fail)
    with pytest.raises(OSError, match="disk full"):
        explanation.save(tmp_path / "map")
    assert npz.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.json", "map.npz"]


@pytest.mark.parametrize(
    "method",
    [
        "gradient",
        "gradcam",
        "guided_gradcam",
        "integrated_gradients",
        "smoothgrad",
        "occlusion",
        "rise",
        "scorecam",
    ],
)
def test_explanations_carry_the_models_outputs_on_the_input(method: str) -> None:
    """So callers need no second forward pass for the predictions (the batch runner)."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    options = {"n_samples": 2, "steps": 4, "n_masks": 8, "window": 4, "stride": 4}
    explanation = salience.explain(model, x, method=method, **method_options(method, options))
    with torch.no_grad():
        expected = model(x)
    assert explanation.outputs is not None
    torch.testing.assert_close(explanation.outputs, expected, rtol=1e-5, atol=1e-5)
    assert explanation.with_names(["a"] * 5).outputs is explanation.outputs
