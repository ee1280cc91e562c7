"""Saving and loading explanations."""

from __future__ import annotations

import json
from dataclasses import replace
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


def test_figures_of_several_targets_are_named_by_rank_and_class() -> None:
    names = ["Egyptian cat", "crème brûlée", "../a:b*?", "", "x" * 60]
    top = salience.explain(
        SoftplusNet(classes=5), torch.randn(1, 10), method="gradient", target="top-5"
    )
    explanation = replace(top, targets=torch.arange(5)[None])  # the ranks in class order
    named = explanation.with_names(names)
    assert [named.figure_suffix(k) for k in range(5)] == [
        "_top1_egyptian-cat",
        "_top2_creme-brulee",
        "_top3_a-b",
        "_top4_class3",  # nothing of the name is left: the class index instead
        "_top5_" + "x" * 40,
    ]
    assert explanation.figure_suffix(2) == "_top3_class2"  # no names at all
    single = salience.explain(SoftplusNet(), torch.randn(1, 10), method="gradient", target=1)
    assert single.with_names(names).figure_suffix(0) == ""  # one target's names are unchanged


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
