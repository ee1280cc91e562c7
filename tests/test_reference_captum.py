"""Equality with Captum, the reference implementation, for the same model, input and settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salience
from conftest import SmallCNN
from salience.methods.noise import noise_scale

captum_attr = pytest.importorskip("captum.attr")
# Captum announces that it sets requires_grad and hooks ReLUs; that is its business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def relative_gap(ours: Tensor, reference: Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.fixture
def model() -> SmallCNN:
    return SmallCNN().eval()


def test_integrated_gradients_equals_captum(model: SmallCNN, images: Tensor) -> None:
    ours = salience.explain(model, images, method="integrated_gradients", steps=24, target=2)
    reference = captum_attr.IntegratedGradients(model).attribute(
        images, target=2, n_steps=24, method="gausslegendre"
    )
    assert relative_gap(ours.attributions[:, 0], reference) < 1e-4


def test_smoothgrad_equals_captum_noise_tunnel_with_the_same_noise(
    model: SmallCNN, images: Tensor
) -> None:
    x = images[:1]
    noise = 0.2
    ours = salience.explain(model, x, method="smoothgrad", n_samples=6, noise=noise, seed=11)
    torch.manual_seed(11)  # Captum draws from the global generator, sample-major as we do
    reference = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=6,
        stdevs=float(noise_scale(x, noise)[0]),
        target=int(ours.targets[0, 0]),
        abs=False,
    )
    assert relative_gap(ours.attributions[:, 0], reference) < 1e-4


class ModuleReLUNet(nn.Module):
    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x)) if self.functional else self.act(self.conv(x))
        return self.fc(h.mean(dim=(2, 3)))


def test_guided_backprop_equals_captum_on_module_relus(images: Tensor) -> None:
    torch.manual_seed(0)
    model = ModuleReLUNet(functional=False).eval()
    ours = salience.explain(model, images, method="guided_backprop", target=1)
    reference = captum_attr.GuidedBackprop(model).attribute(images, target=1)
    assert relative_gap(ours.attributions[:, 0], reference) < 1e-5


def test_guided_backprop_reaches_functional_relu_where_captum_does_not(images: Tensor) -> None:
    torch.manual_seed(0)
    model = ModuleReLUNet(functional=True).eval()
    ours = salience.explain(model, images, method="guided_backprop", target=1).attributions[:, 0]
    plain = salience.explain(model, images, method="gradient", target=1).attributions[:, 0]
    captum = captum_attr.GuidedBackprop(model).attribute(images, target=1)
    assert relative_gap(captum, plain) < 1e-5  # Captum silently returns the plain gradient
    assert relative_gap(ours, plain) > 0.05  # the guided rule was applied to F.relu
    module_model = ModuleReLUNet(functional=False).eval()
    module_model.load_state_dict(model.state_dict())
    same_net = salience.explain(module_model, images, method="guided_backprop", target=1)
    assert relative_gap(ours, same_net.attributions[:, 0]) < 1e-5
