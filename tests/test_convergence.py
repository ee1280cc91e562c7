"""Convergence is reported: split-half agreement of sampled maps (SmoothGrad, VarGrad, RISE),
completeness of Integrated Gradients, a warning from the command, and ``auto`` sample counts
that grow until the figure is met, within a cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import salience
from salience import cli
from salience.methods.convergence import (
    AGREEMENT_THRESHOLD,
    AUTO_START,
    convergence_warning,
    rank_agreement,
    spearman_brown,
)

FACTORY = "model_factories:seeded_digits_net"


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double()


def relu_model() -> nn.Module:
    """A small ReLU network whose gradient changes from point to point."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 64, 4),
    ).double()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("method", ["smoothgrad", "vargrad"])
def test_a_linear_models_halves_agree_exactly(method: str, images: torch.Tensor) -> None:
    # the gradient of a linear model is its weight row at every point: both halves of the
    # samples give the same map (VarGrad: the same zero map), so the agreement is 1
    explanation = salience.explain(linear_model(), images, method=method, n_samples=6)
    convergence = explanation.info["convergence"]
    assert convergence["measure"] == "split-half spearman"
    assert convergence["value"] == pytest.approx(1.0, abs=1e-12)
    assert convergence["met"] and convergence["samples"] == 6
    assert np.allclose(convergence["per_map"], 1.0)


def test_the_halves_are_the_two_halves_of_the_samples(images: torch.Tensor) -> None:
    # the reported agreement is that of the maps of samples 0..n/2-1 and n/2..n-1, which are
    # the first n/2 samples of the same seed and the rest: recomputed here from two runs
    model = relu_model()
    full = salience.explain(model, images[:1], method="smoothgrad", n_samples=8, noise=0.5)
    first = salience.explain(model, images[:1], method="smoothgrad", n_samples=4, noise=0.5)
    mean = full.attributions
    # the second half's mean: (8 · mean − 4 · first) / 4
    second = 2 * mean - first.attributions
    expected = rank_agreement(first.attributions, second)
    assert full.info["convergence"]["value"] == pytest.approx(float(expected.min()), abs=1e-9)


def test_a_noisy_map_is_flagged_and_auto_adds_samples_until_it_converges(
    images: torch.Tensor,
) -> None:
    model = relu_model()
    few = salience.explain(model, images, method="smoothgrad", n_samples=4, noise=1.0)
    assert few.info["convergence"]["value"] < AGREEMENT_THRESHOLD
    assert not few.info["convergence"]["met"]
    assert "not converged" in convergence_warning("smoothgrad", few.info)

    grown = salience.explain(
        model, images, method="smoothgrad", n_samples="auto", noise=1.0, max_samples=4096
    )
    convergence = grown.info["convergence"]
    counts = [count for count, _ in convergence["history"]]
    assert counts[0] == AUTO_START and counts == [AUTO_START * 2**i for i in range(len(counts))]
    assert convergence["met"] and convergence["value"] >= AGREEMENT_THRESHOLD
    assert all(value < AGREEMENT_THRESHOLD for _, value in convergence["history"][:-1])
    assert convergence_warning("smoothgrad", grown.info) is None
    # the map of auto is the map of that many samples with the same seed
    fixed = salience.explain(model, images, method="smoothgrad", n_samples=counts[-1], noise=1.0)
    assert torch.equal(fixed.attributions, grown.attributions)


def test_auto_stops_at_its_cap(images: torch.Tensor) -> None:
    model = relu_model()
    capped = salience.explain(
        model, images, method="vargrad", n_samples="auto", noise=1.0, max_samples=48
    )
    convergence = capped.info["convergence"]
    assert [count for count, _ in convergence["history"]] == [32, 48]
    assert convergence["samples"] == 48 and not convergence["met"]


def test_rise_reports_its_split_half_agreement_and_grows_its_masks(images: torch.Tensor) -> None:
    # a model that depends on one pixel's brightness only: RISE's map has one clear peak, and a
    # few hundred masks find it in both halves
    class OnePixel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            value = 8 * x[:, :, 2, 5].mean(dim=1, keepdim=True)
            return torch.cat([value, -value], dim=1)

    x = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    explanation = salience.explain(OnePixel(), x, method="rise", n_masks="auto", grid=4)
    convergence = explanation.info["convergence"]
    assert convergence["measure"] == "split-half spearman" and convergence["met"]
    assert explanation.info["masks"] == convergence["samples"] == convergence["history"][-1][0]
    single = salience.explain(OnePixel(), x, method="rise", n_masks=1, grid=4)
    assert single.info["convergence"]["value"] is None and not single.info["convergence"]["met"]


def test_integrated_gradients_reports_completeness(images: torch.Tensor) -> None:
    explanation = salience.explain(relu_model(), images, method="integrated_gradients", steps=4)
    convergence = explanation.info["convergence"]
    assert convergence["measure"] == "completeness error"
    assert convergence["value"] == explanation.info["max_completeness_error"]
    assert convergence["met"] == (convergence["value"] <= convergence["threshold"])
    linear = salience.explain(linear_model(), images, method="integrated_gradients", steps=2)
    assert linear.info["convergence"]["met"]  # exact on a linear model


def test_spearman_brown_corrects_positive_agreements_only() -> None:
    values = spearman_brown(np.array([0.5, 1.0, 0.0, -0.4]))
    assert np.allclose(values, [2 / 3, 1.0, 0.0, -0.4])


def test_the_command_warns_and_takes_auto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(image)
    common = ["explain", str(image), "--model", FACTORY, "--size", "32", "--quiet"]
    out = str(tmp_path / "out")
    assert cli.main([*common, "--method", "smoothgrad", "--samples", "2", "-o", out]) == 0
    err = capsys.readouterr().err
    assert "warning: grey: smoothgrad: not converged, split-half agreement" in err
    assert "--samples auto" in err
    assert cli.main([*common, "--method", "smoothgrad", "--samples", "auto", "-o", out]) == 0
    saved = salience.Explanation.load(tmp_path / "out" / "grey_smoothgrad.npz")
    assert saved.info["convergence"]["history"][0][0] == AUTO_START
