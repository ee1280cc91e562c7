"""Score-CAM's approximations are options, labelled, with known answers: Faster-Score-CAM's top
channels by variance, and pytorch-grad-cam's softmax over channels; the default is the paper's."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import relative_error
from salience.postprocess import upsample


class Net(nn.Module):
    """conv (6 channels, the last one constant: its weights are zero) → pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight[-1] = 0
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def case() -> tuple[nn.Module, Tensor, Tensor]:
    """The model in float64, an input, and the layer's activations on it."""
    model = Net().double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        activations = model.features(x)[0]
    return model, x, activations


def masked_inputs(x: Tensor, activations: Tensor) -> Tensor:
    """x times each channel upsampled and min-max normalized (a constant channel: zeros)."""
    masks = upsample(activations, tuple(x.shape[-2:]))
    low = masks.flatten(1).amin(1).reshape(-1, 1, 1)
    high = masks.flatten(1).amax(1).reshape(-1, 1, 1)
    span = torch.where(high > low, high - low, 1)
    return x * ((masks - low) / span).unsqueeze(1)


def cam(weights: Tensor, activations: Tensor) -> Tensor:
    return (weights.reshape(-1, 1, 1) * activations).sum(0).clamp_min(0)


TARGET = 2


def test_top_channels_weighs_only_the_channels_of_largest_variance(case) -> None:
    model, x, activations = case
    found = salience.explain(
        model, x, method="scorecam", layer="features", target=TARGET, top_channels=3
    )
    variance = activations.flatten(1).var(dim=1, correction=0)
    top = variance.topk(3).indices
    with torch.no_grad():
        probability = model(masked_inputs(x, activations)).softmax(1)[:, TARGET]
        start = model(torch.zeros_like(x)).softmax(1)[0, TARGET]
    weights = torch.zeros(6, dtype=torch.float64)
    weights[top] = probability[top] - start
    assert relative_error(found.map(0, 0).double(), cam(weights, activations)) < 1e-5
    assert "Faster-Score-CAM" in found.info["approximation"]
    assert found.params["top_channels"] == 3


def test_channel_softmax_gives_pytorch_grad_cams_weights(case) -> None:
    model, x, activations = case
    found = salience.explain(
        model, x, method="scorecam", layer="features", target=TARGET, weighting="channel_softmax"
    )
    with torch.no_grad():
        logits = model(masked_inputs(x, activations))[:, TARGET]  # the constant one: zeros in
    expected = cam(logits.softmax(0), activations)
    assert relative_error(found.map(0, 0).double(), expected) < 1e-5
    assert "pytorch-grad-cam" in found.info["approximation"]
    assert found.info["weights"] == "softmax over channels of the logit"


def test_the_default_is_the_papers_formula_and_carries_no_label(case) -> None:
    model, x, activations = case
    found = salience.explain(model, x, method="scorecam", layer="features", target=TARGET)
    with torch.no_grad():
        probability = model(masked_inputs(x, activations)).softmax(1)[:, TARGET]
        start = model(torch.zeros_like(x)).softmax(1)[0, TARGET]
    expected = cam(probability - start, activations)  # the constant channel: exactly 0
    assert relative_error(found.map(0, 0).double(), expected) < 1e-5
    assert "approximation" not in found.info
