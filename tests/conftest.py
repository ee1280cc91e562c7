"""Small models with known answers, shared by the tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salience.methods.cam import CAMExplainer
from salience.registry import available, get

CAM_METHODS = [
    m for m in available("method", sort=False) if issubclass(get("method", m), CAMExplainer)
]
"""Every class activation map, in the order they are registered."""
GRID_CAMS = [m for m in CAM_METHODS if m != "guided_gradcam"]
"""The CAMs whose maps are at the layer's resolution (guided Grad-CAM's is the input's)."""


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual − expected| / max |expected|, in float64."""
    scale = float(expected.abs().max()) or 1.0
    return float((actual.double() - expected.double()).abs().max()) / scale


def layer_capture(
    model: nn.Module, x: Tensor, layer: str, score: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """A layer's output and the gradient of ``score(outputs).sum()``, by a plain hook."""
    captured: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, output: captured.append(output)
    )
    try:
        with torch.enable_grad():
            outputs = model.eval()(x)
            (gradient,) = torch.autograd.grad(score(outputs).sum(), captured[0])
    finally:
        handle.remove()
    return captured[0].detach(), gradient


class Quadratic(nn.Module):
    """f(x) = Σ w·x², one output per sample: ∇f = 2·w·x."""

    def __init__(self, features: int = 6) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 2.0, features, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return (self.w * x.square()).sum(dim=1)


class SoftplusNet(nn.Module):
    """A smooth two-layer network, on which Integrated Gradients converges fast."""

    def __init__(self, features: int = 10, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.first = nn.Linear(features, hidden)
        self.second = nn.Linear(hidden, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        return self.second(F.softplus(self.first(x)))


class SmallCNN(nn.Module):
    """Conv-BN-ReLU network with dropout, a functional ReLU6 and a frozen layer."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, classes)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.copy_(torch.randn(8, generator=generator) * 0.1)
                bn.running_var.copy_(torch.rand(8, generator=generator) + 0.5)
                bn.weight.copy_(torch.rand(8, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(8, generator=generator) * 0.1)
        self.conv1.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = F.relu6(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean(dim=(2, 3))))


@pytest.fixture(scope="session", autouse=True)
def private_program_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Captured programs go to a store of the test session's own, never the user's."""
    previous = os.environ.get("SALIENCE_CACHE_DIR")
    os.environ["SALIENCE_CACHE_DIR"] = str(tmp_path_factory.mktemp("program-store"))
    yield
    if previous is None:
        os.environ.pop("SALIENCE_CACHE_DIR", None)
    else:
        os.environ["SALIENCE_CACHE_DIR"] = previous


@pytest.fixture
def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


@pytest.fixture
def images() -> Tensor:
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def model_state(model: nn.Module) -> dict:
    """Everything a call could change on a model."""
    return {
        "training": [(name, m.training) for name, m in model.named_modules()],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "grads": [name for name, p in model.named_parameters() if p.grad is not None],
        "hooks": [
            (
                name,
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for name, m in model.named_modules()
        ],
        "modules": [(name, type(m).__name__) for name, m in model.named_modules()],
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "grads", "hooks", "modules"):
        assert before[key] == after[key], key
    assert before["weights"].keys() == after["weights"].keys()
    for name, tensor in before["weights"].items():
        assert torch.equal(tensor, after["weights"][name]), name


def browser_session(*size: int) -> Iterator[object]:
    """A headless Chromium driver for a module's browser tests (``yield from`` in a fixture).

    Skipped with ``SALIENCE_SKIP_BROWSER=1``; fails with the install command when Chromium is
    missing (``.ci/run`` installs it).
    """
    if os.environ.get("SALIENCE_SKIP_BROWSER") == "1":
        pytest.skip("SALIENCE_SKIP_BROWSER=1")
    from salience.server.browser import chromium, missing_browser

    if problem := missing_browser():
        pytest.fail(problem)
    with chromium(*size) as driver:
        yield driver
