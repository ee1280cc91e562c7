"""Integrated Gradients: completeness, exactness on linear models, refinement that reuses points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import SoftplusNet
from salience.methods.integrated import RULES, initial_nodes, refined_nodes


def test_completeness_on_a_smooth_model_within_half_a_percent() -> None:
    model = SoftplusNet()
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(7)) * 2
    explanation = salience.explain(
        model, x, method="integrated_gradients", steps=64, rule="riemann_middle"
    )
    total = explanation.attributions.flatten(2).sum(dim=2)
    expected = explanation.scores - torch.tensor(explanation.info["baseline_scores"])
    relative = ((total - expected).abs() / expected.abs()).max()
    assert float(relative) < 0.005
    assert explanation.info["max_completeness_error"] == pytest.approx(float(relative), rel=1e-4)


def test_exact_on_linear_model_for_every_rule() -> None:
    model = nn.Linear(4, 3).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    baseline = torch.randn(4, dtype=torch.float64)
    for rule in RULES:
        explanation = salience.explain(
            model, x, method="integrated_gradients", rule=rule, steps=5, baseline=baseline, target=1
        )
        expected = model.weight.detach()[1] * (x - baseline)
        torch.testing.assert_close(
            explanation.attributions[:, 0].double(), expected, atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("rule", RULES)
def test_quadrature_integrates_polynomials(rule: str) -> None:
    nodes = initial_nodes(rule, 16)
    assert nodes.weights.sum() == pytest.approx(1.0)
    exact_degree = 2 * 16 - 1 if rule == "gausslegendre" else 1
    value = (nodes.weights * nodes.alphas**exact_degree).sum()
    tolerance = 1e-12 if rule in ("gausslegendre", "riemann_middle", "riemann_trapezoid") else 0.05
    assert value == pytest.approx(1 / (exact_degree + 1), abs=tolerance)


@pytest.mark.parametrize("rule", ["riemann_middle", "riemann_trapezoid", "riemann_left"])
def test_refinement_reuses_points_and_equals_the_finer_rule(rule: str) -> None:
    coarse = initial_nodes(rule, 5)
    finer = refined_nodes(rule, 5)
    union = np.sort(np.concatenate([coarse.alphas, finer.alphas]))
    full = initial_nodes(rule, finer.steps)
    np.testing.assert_allclose(union, np.sort(full.alphas), atol=1e-12)
    assert len(union) == finer.steps  # every old point is kept, none is evaluated twice


class CountingSoftplus(SoftplusNet):
    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return super().forward(x)


def test_tolerance_refines_until_converged_and_counts_each_point_once() -> None:
    model = CountingSoftplus()
    adapter = salience.TorchAdapter(model, inference_copy=False)
    x = torch.randn(1, 10, generator=torch.Generator().manual_seed(1)) * 3
    explainer = salience.IntegratedGradients(
        adapter, steps=2, rule="riemann_middle", tolerance=1e-4, max_steps=1000
    )
    explanation = explainer(x, target=0)
    info = explanation.info
    assert info["converged"] is True
    assert info["max_completeness_error"] <= 1e-4
    steps = [s for s, _ in info["error_history"]]
    assert steps == [2 * 3**i for i in range(len(steps))] and len(steps) > 1
    assert model.rows == 2 + info["steps"]  # x and baseline once, then each path point once
    direct = salience.explain(
        model,
        x,
        method="integrated_gradients",
        steps=info["steps"],
        rule="riemann_middle",
        target=0,
    )
    torch.testing.assert_close(explanation.attributions, direct.attributions, atol=1e-5, rtol=1e-4)


def test_step_cap_is_reported_when_not_converged() -> None:
    model = SoftplusNet()
    x = torch.randn(1, 10) * 3
    explanation = salience.explain(
        model,
        x,
        method="integrated_gradients",
        steps=2,
        rule="riemann_left",
        tolerance=1e-12,
        max_steps=16,
    )
    assert explanation.info["converged"] is False
    assert explanation.info["steps"] == 16


def test_blur_baseline_and_chunk_size_independence() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(2, 3, 16, 16)
    model(x)
    maps = [
        salience.explain(
            model, x, method="integrated_gradients", baseline="blur", steps=8, chunk_size=c
        ).attributions
        for c in (1, 5, 16)
    ]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], atol=1e-5, rtol=1e-4)


def test_bad_configuration_is_rejected() -> None:
    model = SoftplusNet()
    with pytest.raises(ValueError, match="unknown integration rule"):
        salience.IntegratedGradients(model, rule="simpson")
    with pytest.raises(ValueError, match="unknown baseline"):
        salience.IntegratedGradients(model, baseline="noise")
