"""Honest faithfulness: ROAD's imputation, blurred or mean substrates, both orders (MoRF and
LeRF), checked against Quantus on the same maps, and the table's verdict against the random
map."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from salience.evaluation.faithfulness import (
    GAMES,
    CausalMetric,
    evaluate_methods,
    random_saliency,
)
from salience.evaluation.road import linear_imputation
from salience.methods.base import Attribution, Explainer

SIDE = 10
CHANNELS = 4  # with 5 pixels a step, 20 features: Quantus needs a divisor of H·W


@pytest.fixture(scope="module")
def quantus() -> Iterator[Any]:
    """Quantus with TensorFlow hidden while this module runs: it imports TensorFlow when
    present (most of a minute) and asks for it on every call; only its torch side is used."""
    hidden = "tensorflow" not in sys.modules
    if hidden:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # find_spec → None
    try:
        import quantus

        yield quantus
    finally:
        if hidden:
            del sys.modules["tensorflow"]


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(CHANNELS, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * SIDE * SIDE, 3),
        )
        .double()
        .eval()
    )  # Quantus refuses a model in training mode


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images and maps of distinct values (so no order depends on how ties break)."""
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(2, CHANNELS, SIDE, SIDE, generator=generator, dtype=torch.float64)
    return x, random_saliency(x, seed=5)


def test_the_imputation_is_quantus_noisy_linear_imputation(quantus: Any) -> None:
    # both solve the same sparse system (SuperLU) in float64: equal to rounding, 1e-10 is
    # thousands of ulps of values in [0, 1] through a well-conditioned solve
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    image = rng.random((CHANNELS, 9, 11))
    removed = rng.random((9, 11)) < 0.6
    expected = noisy_linear_imputation(image, np.flatnonzero(removed), noise=0.0)
    np.testing.assert_allclose(linear_imputation(image, removed, noise=0.0), expected, atol=1e-10)
    noisy = linear_imputation(image, removed, noise=0.01, generator=np.random.default_rng(1))
    assert np.array_equal(noisy[:, ~removed], image[:, ~removed])
    assert 0 < np.abs(noisy - expected).max() < 0.1


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_deletion_curves_are_quantus_pixel_flipping(
    quantus: Any, batch: tuple[torch.Tensor, torch.Tensor], order: str
) -> None:
    # Quantus' PixelFlipping flips features_in_step features per step (here all channels of
    # `step` pixels) to a baseline and records the softmax probability of y after each step;
    # its curve has no point before the first step (ours starts at the intact image), and LeRF
    # is PixelFlipping of the reversed map. Ours: scores[1:] are its values.
    x, maps = batch
    # Quantus runs torch models in float32
    x, model, step = x.float(), small_model().float(), 5
    metric = CausalMetric(model, "deletion", pixels_per_step=step, order=order)
    y = model(x).argmax(dim=1)
    result = metric(x, maps, y)
    flipping = quantus.PixelFlipping(
        features_in_step=CHANNELS * step,
        normalise=False,
        abs=False,
        perturb_baseline=0.0,
        disable_warnings=True,
    )
    reversed_ranking = 1 - maps  # positive, as Quantus asks; the order of -maps
    signed = maps if order == "morf" else reversed_ranking
    expected = flipping(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=signed[:, None].expand_as(x).numpy(),
        device="cpu",
        softmax=True,
    )
    # float32 passes of the same images in other batch sizes: a few ulps of a probability
    # (6e-8 each) per layer; 1e-6 bounds it
    np.testing.assert_allclose(result.scores[:, 1:].numpy(), np.array(expected), atol=1e-6)
    assert result.order == order and result.substrate == "zeros"


def test_road_curves_are_the_scores_of_quantus_imputed_images(
    quantus: Any, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Quantus' ROAD metric records only whether the class stays predicted; the curve here is
    # the probability of images whose top 0, 10, ..., 90% pixels (MoRF) or bottom ones (LeRF)
    # Quantus' noisy_linear_imputation fills (noise 0 on both sides)
    from quantus.functions.perturb_func import noisy_linear_imputation

    x, maps = batch
    model = small_model()
    y = model(x).argmax(dim=1)
    for order in ("morf", "lerf"):
        result = CausalMetric(model, "deletion", substrate="road", order=order, road_noise=0.0)(
            x, maps, y
        )
        assert result.fractions.tolist() == pytest.approx([k / 10 for k in range(10)])
        for n in range(len(x)):
            ranking = np.argsort(-(maps[n] if order == "morf" else -maps[n]).numpy().ravel())
            images = [
                noisy_linear_imputation(x[n].numpy(), ranking[: SIDE * SIDE * k // 10], noise=0.0)
                for k in range(10)
            ]
            with torch.no_grad():
                probabilities = torch.softmax(model(torch.as_tensor(np.stack(images))), dim=1)
            # the same float64 solves and passes: 1e-10
            np.testing.assert_allclose(
                result.scores[n].numpy(), probabilities[:, y[n]].numpy(), atol=1e-10
            )


def test_a_mean_substrate_is_each_channels_mean(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, maps = batch
    model = small_model()
    means = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    by_name = CausalMetric(model, substrate="mean", pixels_per_step=25)(x, maps)
    by_tensor = CausalMetric(model, substrate=means, pixels_per_step=25)(x, maps)
    assert torch.equal(by_name.scores, by_tensor.scores)
    assert torch.equal(by_name.scores[:, -1], by_tensor.scores[:, -1])


class _Fixed(Explainer):
    """A 'method' that returns a given map: the true importance or its reverse."""

    name = "fixed"
    needs_gradients = False

    def __init__(self, model: object, maps: torch.Tensor, name: str) -> None:
        super().__init__(model)
        self.maps, self.name = maps, name

    def attribute(
        self, x: torch.Tensor, spec: Any, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        selection, scores, outputs = self.unperturbed_pass(x, spec, score)
        return Attribution(self.maps[:, None, None], selection, scores, outputs=outputs)


def test_the_table_says_where_a_method_does_not_beat_the_random_map() -> None:
    # the model's score is the energy of its first channel's top-left quadrant, on a random
    # texture: zeros, a mean, a blur and ROAD's imputation all lower it (each replaces a pixel
    # by something smoother), so the map that ranks that quadrant first is faithful in every
    # game, and the reversed map in none
    class Quadrant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            value = 4 * x[:, 0, : SIDE // 2, : SIDE // 2].square().mean(dim=(1, 2))
            return torch.stack([value, -value], dim=1)

    generator = torch.Generator().manual_seed(6)
    x = torch.rand((1, CHANNELS, SIDE, SIDE), generator=generator, dtype=torch.float64)
    quadrant = torch.zeros(SIDE, SIDE, dtype=torch.float64)
    quadrant[: SIDE // 2, : SIDE // 2] = 1
    jitter = torch.rand((SIDE, SIDE), generator=generator, dtype=torch.float64)
    truth = (quadrant + 0.1 * jitter)[None]
    model = Quadrant()
    methods = [_Fixed(model, truth, "faithful"), _Fixed(model, -truth, "reversed")]
    report = evaluate_methods(
        model, x, methods, target=0, pixels_per_step=10, games=list(GAMES), seed=3
    )
    assert report.not_better_than_random("faithful") == []
    assert set(report.not_better_than_random("reversed")) == set(GAMES)
    table = report.format_table().splitlines()
    assert table[0].endswith("not better than random")
    assert "road morf AUC ↓" in table[0] and "road lerf AUC ↑" in table[0]
    faithful = next(line for line in table if line.startswith("faithful"))
    assert faithful.endswith(" -")
    reversed_line = next(line for line in table if line.startswith("reversed"))
    assert "road_morf" in reversed_line and "deletion_lerf" in reversed_line
