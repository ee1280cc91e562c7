"""Sanity checks: model-parameter and data randomization (Adebayo et al. 2018)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import SmallCNN, assert_same_state, model_state
from salience.adapters.layers import LayerError
from salience.adapters.randomize import (
    RandomizationError,
    RandomizationUnit,
    randomization_units,
    randomized_copy,
)
from salience.adapters.torch import TorchAdapter
from salience.cli import main
from salience.evaluation.randomization import SanityResult, sanity_check
from salience.evaluation.similarity import SIMILARITY_METRICS, similarities


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.relu(self.conv(x))


class Blocks(nn.Module):
    """A stem with its BatchNorm, a container of blocks, a head, and a module that never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(8, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-1, 1)
            self.norm.running_var.uniform_(0.5, 2)
            self.norm.weight.uniform_(0.5, 2)
            self.norm.bias.uniform_(-1, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.blocks(torch.relu(self.norm(self.stem(x))))
        return self.head(self.pool(features).flatten(1))


@pytest.fixture
def blocks() -> Blocks:
    torch.manual_seed(0)
    return Blocks().eval()


@pytest.fixture
def photos() -> Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def test_units_run_from_the_top_down_with_norms_joined_and_containers_split(
    blocks: Blocks, photos: Tensor
) -> None:
    units = TorchAdapter(blocks).randomization_units(photos)
    assert units == [
        RandomizationUnit("head", ("head",)),
        RandomizationUnit("blocks.1", ("blocks.1",)),
        RandomizationUnit("blocks.0", ("blocks.0",)),
        RandomizationUnit("stem", ("stem", "norm")),
    ]
    named = TorchAdapter(blocks).randomization_units(photos, ["head", "blocks.0.conv"])
    assert [unit.modules for unit in named] == [("head",), ("blocks.0.conv",)]
    with pytest.raises(LayerError, match="no parameters"):
        TorchAdapter(blocks).randomization_units(photos, ["pool"])
    with pytest.raises(LookupError):
        TorchAdapter(blocks).randomization_units(photos, ["bloks.0"])


def test_randomized_copy_redraws_only_its_units_and_leaves_the_model_alone(
    blocks: Blocks, photos: Tensor
) -> None:
    before = model_state(blocks)
    units = randomization_units(blocks, TorchAdapter(blocks).layer_table(photos))
    copy = randomized_copy(blocks, [units[0], units[3]], seed=5)
    assert_same_state(before, model_state(blocks))
    original, changed = blocks.state_dict(), copy.state_dict()
    for name, tensor in original.items():
        redrawn = name.startswith(("head.", "stem.", "norm."))
        if redrawn and "num_batches" not in name:
            assert not torch.equal(tensor, changed[name]), name
        elif not redrawn:
            assert torch.equal(tensor, changed[name]), name
    # normalization reset to the identity, biases to zero
    assert torch.equal(copy.norm.weight, torch.ones(8)) and torch.equal(
        copy.norm.bias, torch.zeros(8)
    )
    assert torch.equal(copy.norm.running_mean, torch.zeros(8))
    assert torch.equal(copy.norm.running_var, torch.ones(8))
    assert torch.equal(copy.head.bias, torch.zeros(4))


def test_new_weights_are_he_truncated_normal() -> None:
    wide = nn.Sequential(nn.Linear(400, 300))
    copy = randomized_copy(wide, [RandomizationUnit("0", ("0",))], seed=1)
    weights = copy[0].weight.detach().double()
    expected = math.sqrt(2.0 / 400)
    assert float(weights.std()) == pytest.approx(expected, rel=0.02)
    assert float(weights.mean()) == pytest.approx(0.0, abs=0.01 * expected)
    assert float(weights.abs().max()) <= 2.0 * expected / 0.8796256610342398 + 1e-9


def test_a_units_weights_depend_on_the_seed_and_the_unit_only(
    blocks: Blocks, photos: Tensor
) -> None:
    units = TorchAdapter(blocks).randomization_units(photos)
    head_alone = randomized_copy(blocks, [units[0]], seed=3)
    head_and_more = randomized_copy(blocks, units[:3], seed=3)
    other_seed = randomized_copy(blocks, [units[0]], seed=4)
    assert torch.equal(head_alone.head.weight, head_and_more.head.weight)
    assert not torch.equal(head_alone.head.weight, other_seed.head.weight)


METHODS = ["gradient", "guided_backprop", "gradcam"]


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_each_step_equals_explaining_the_randomized_model_directly(
    blocks: Blocks, photos: Tensor, mode: str
) -> None:
    result = sanity_check(blocks, photos, METHODS, mode=mode, seed=7, progress=False)
    units = TorchAdapter(blocks).randomization_units(photos)
    assert result.steps == tuple(unit.name for unit in units)
    assert result.similarity.shape == (3, 4, 2, len(SIMILARITY_METRICS))
    trained_classes = blocks(photos).argmax(dim=1).tolist()
    for step in (0, 2):
        chosen = units[: step + 1] if mode == "cascading" else [units[step]]
        random_model = randomized_copy(blocks, chosen, seed=7)
        for m, method in enumerate(METHODS):
            reference = salience.explain(blocks, photos, method=method, target=trained_classes)
            randomized = salience.explain(
                random_model, photos, method=method, target=trained_classes
            )
            for n in range(2):
                found = similarities(reference.map(n), randomized.map(n), (32, 32))  # 16×16, ×2
                expected = [found[metric] for metric in SIMILARITY_METRICS]
                np.testing.assert_allclose(result.similarity[m, step, n], expected, atol=1e-6)


def test_equal_seeds_give_equal_results_and_the_model_is_not_changed(photos: Tensor) -> None:
    model = SmallCNN().train()  # dropout, a frozen layer, training mode: all must survive
    before = model_state(model)
    first = sanity_check(model, photos[:, :, :12, :12], METHODS, seed=1, progress=False)
    again = sanity_check(model, photos[:, :, :12, :12], METHODS, seed=1, progress=False)
    other = sanity_check(model, photos[:, :, :12, :12], METHODS, seed=2, progress=False)
    assert_same_state(before, model_state(model))
    np.testing.assert_array_equal(first.similarity, again.similarity)
    np.testing.assert_array_equal(first.maps, again.maps)
    assert not np.array_equal(first.similarity, other.similarity)


def test_verdicts_follow_the_mean_rank_correlation() -> None:
    similarity = np.zeros((2, 3, 1, len(SIMILARITY_METRICS)))
    similarity[0, :, 0, 0] = [0.9, 0.6, 0.3]  # mean 0.6: independent
    similarity[1, :, 0, 0] = [0.5, 0.4, 0.2]  # mean 0.37: sensitive
    result = SanityResult(
        "cascading", ("a", "b"), ("top", "mid", "low"), similarity, np.zeros((2, 4, 8, 8))
    )
    verdicts = result.verdicts()
    assert not verdicts["a"].sensitive and verdicts["b"].sensitive
    assert verdicts["a"].similarity == pytest.approx(0.6)
    assert (verdicts["b"].lowest, verdicts["b"].lowest_step) == (0.2, "low")
    assert "largely independent of the model" in verdicts["a"].text
    assert "sensitive to the model" in verdicts["b"].text and "0.5" in verdicts["b"].text


def test_bad_requests_are_refused(blocks: Blocks, photos: Tensor) -> None:
    with pytest.raises(ValueError, match="unknown randomization mode"):
        sanity_check(blocks, photos, METHODS, mode="sideways", progress=False)
    with pytest.raises(ValueError, match="one target per sample"):
        sanity_check(blocks, photos, METHODS, target="top-2", progress=False)
    with pytest.raises(ValueError, match="at least one method"):
        sanity_check(blocks, photos, [], progress=False)

    class BlackBox:
        is_adapter = True
        device = torch.device("cpu")

        def prepare_input(self, x: Tensor) -> Tensor:
            return x

        def forward(self, x: Tensor, **_options: object) -> Tensor:
            return x.flatten(1)

    with pytest.raises(RandomizationError, match=r"pass a torch\.nn\.Module"):
        sanity_check(BlackBox(), photos, METHODS, progress=False)


def test_results_are_saved_as_tables_and_figures(blocks: Blocks, photos: Tensor, tmp_path: Path):
    result = sanity_check(blocks, photos, METHODS, mode="independent", progress=False)
    written = result.save(tmp_path)
    assert {path.name for path in written} == {
        "sanity_independent.csv",
        "sanity_independent.json",
        "sanity_independent.png",
        "sanity_independent_curves.png",
    }
    with open(tmp_path / "sanity_independent.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 4 * 2
    summary = json.loads((tmp_path / "sanity_independent.json").read_text())
    assert summary["steps"] == list(result.steps)
    means = summary["mean"]["spearman_abs"]["gradient"]
    np.testing.assert_allclose(means, result.mean()[0])
    assert summary["verdicts"]["gradcam"]["threshold"] == 0.5
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_the_papers_finding_on_the_bundled_model_and_photo() -> None:
    """Top-layer randomization decorrelates gradient and Grad-CAM maps, not guided backprop's."""
    spec = salience.zoo.model_spec()
    photo = spec.preset.prepare(salience.zoo.SAMPLE_IMAGES["chelsea"]()).tensor
    result = sanity_check(
        salience.load_model(), photo, METHODS, layers=["_fc", "_conv_head"], progress=False
    )
    after_logits = result.mean("spearman_abs")[:, 0]
    gradient, guided, gradcam = after_logits
    assert gradient < 0.5 and gradcam < 0.5
    assert guided > 0.9
    verdicts = result.verdicts()
    assert verdicts["gradient"].sensitive and not verdicts["guided_backprop"].sensitive


@pytest.mark.slow
def test_data_randomization_on_the_digits(tmp_path: Path) -> None:
    from salience.evaluation.data_randomization import data_randomization_test

    result = data_randomization_test(["gradient", "guided_backprop"], samples=16, progress=False)
    true, permuted = result.models
    assert true.test_accuracy > 0.9  # learned the digits
    assert permuted.train_accuracy >= 0.99 and permuted.test_accuracy < 0.3  # memorized noise
    assert result.similarity.shape == (2, 16, len(SIMILARITY_METRICS))
    gradient, guided = result.mean("spearman_abs")
    assert gradient < 0.5 < guided  # as in the paper: guided backprop barely notices
    written = result.save(tmp_path)
    assert {path.suffix for path in written} == {".csv", ".json", ".png"}


def test_cli_sanity_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status = main(
        ["sanity", "--method", "gradient,gradcam", "--layers", "_fc", "-o", str(out), "--quiet"]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "cascading randomization of efficientnet_lite0: 1 blocks" in printed
    assert "gradient" in printed and "verdict" in printed
    summary = json.loads((out / "sanity_cascading.json").read_text())
    assert summary["steps"] == ["_fc"] and set(summary["verdicts"]) == {"gradient", "gradcam"}

    status = main(["compare", "--method", "gradient,gradcam,gradient_x_input", "-o", str(out)])
    printed = capsys.readouterr().out
    assert status == 0 and "top-10% IoU" in printed
    saved = json.loads((out / "chelsea_agreement.json").read_text())
    assert saved["methods"] == ["gradient", "gradcam", "gradient_x_input"]
    assert len(saved["pairs"]) == 3
    assert (out / "chelsea_compare.png").stat().st_size > 0
    assert (out / "chelsea_agreement.png").stat().st_size > 0
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--method", "gradient"], "at least 2 methods"),
        (["compare", "--method", "gradient,gradcam", "--top", "0"], "--top"),
        (["sanity", "--data", "chelsea"], "--data trains its own models"),
        (["sanity", "--method", "gradient", "--layers", "nope"], "nope"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([*argv, "-o", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1
