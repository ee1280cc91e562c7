"""Methods on small networks trained on scikit-learn's 8×8 digits: real models, known answers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import salience
from salience.targets import TargetError

datasets = pytest.importorskip("sklearn.datasets")


def train(model: nn.Module, x: Tensor, y: Tensor, loss: nn.Module, steps: int = 300) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    data = datasets.load_digits()
    return torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target)


@pytest.fixture(scope="module")
def classifier(digits: tuple[Tensor, Tensor]) -> nn.Module:
    torch.manual_seed(0)
    x, y = digits
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return train(model, x[:1500], y[:1500], nn.CrossEntropyLoss())


@pytest.fixture(scope="module")
def regressor(digits: tuple[Tensor, Tensor]) -> nn.Module:
    """Predicts the digit's value as one number: a one-output regression model."""
    torch.manual_seed(0)
    x, y = digits
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
    return train(model, x[:1500], y[:1500, None].float(), nn.MSELoss(), steps=500)


def test_models_learned_something(
    digits: tuple[Tensor, Tensor], classifier: nn.Module, regressor: nn.Module
) -> None:
    x, y = digits
    with torch.no_grad():
        accuracy = (classifier(x[1500:]).argmax(1) == y[1500:]).float().mean()
        error = (regressor(x[1500:])[:, 0] - y[1500:]).abs().mean()
    assert float(accuracy) > 0.85 and float(error) < 1.5


def test_integrated_gradients_on_a_relu_classifier_meets_its_tolerance(
    digits: tuple[Tensor, Tensor], classifier: nn.Module
) -> None:
    x = digits[0][1500:1505]
    explanation = salience.explain(
        classifier,
        x,
        method="integrated_gradients",
        steps=8,
        rule="riemann_middle",
        tolerance=0.005,
        max_steps=2000,
    )
    assert explanation.info["converged"] is True
    total = explanation.attributions.flatten(1).sum(1)
    expected = explanation.scores[:, 0] - torch.tensor(explanation.info["baseline_scores"])[:, 0]
    assert torch.all((total - expected).abs() <= 0.005 * expected.abs() + 1e-6)


def test_top_k_maps_equal_one_call_per_class(
    digits: tuple[Tensor, Tensor], classifier: nn.Module
) -> None:
    x = digits[0][1500:1504]
    together = salience.explain(classifier, x, method="gradient_x_input", target="top-3")
    for k in range(3):
        alone = salience.explain(
            classifier, x, method="gradient_x_input", target=together.targets[:, k].tolist()
        )
        torch.testing.assert_close(alone.attributions[:, 0], together.attributions[:, k])


def test_regression_output_is_explained_as_is(
    digits: tuple[Tensor, Tensor], regressor: nn.Module
) -> None:
    x = digits[0][1500:1504]
    explanation = salience.explain(
        regressor, x, method="integrated_gradients", steps=256, rule="riemann_middle"
    )
    with torch.no_grad():
        predicted = regressor(x)[:, 0]
        at_zero = regressor(torch.zeros(1, 64))[0, 0]
    assert explanation.targets.tolist() == [[0]] * 4
    torch.testing.assert_close(explanation.scores[:, 0], predicted)
    total = explanation.attributions.flatten(1).sum(1)
    torch.testing.assert_close(
        total, predicted - at_zero, atol=0.02 * float(predicted.abs().max()), rtol=0
    )
    with pytest.raises(TargetError, match="two or more outputs"):
        salience.explain(regressor, x, score="probability")
