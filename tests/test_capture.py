"""Safe capture for long runs of passes: on by default, equal to eager, never for models whose
``forward`` branches on tensor values, the verdict in the explanation's info."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salience
from conftest import SmallCNN, SoftplusNet, relative_error
from salience.adapters.fused import CAPTURED
from salience.adapters.torch import TorchAdapter

# Captured and eager programs run the same float32 operations, in other kernels (oneDNN fuses
# a convolution with what follows it, and may split its sums otherwise): each output moves by
# a few float32 roundings of the sums it is made of, far below the 1e-4 of its largest value
# that the capture is verified to and that these tests ask.
CAPTURE_BOUND = 1e-4


class BranchesOnValues(nn.Module):
    """Negates its features when the input's sum is negative: one trace would hold one path."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        features = self.conv(x)
        if x.sum() > 0:
            features = -features
        return features.mean(dim=(2, 3))


class Volume(nn.Module):
    """A 3-D convolution network: capture is not only for images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.norm = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.norm(self.conv(x))).mean(dim=(2, 3, 4)))


class Signal(nn.Module):
    """A 1-D convolution network, with padding computed from the input's length."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv1d(1, 6, 5)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        pad = (-x.shape[-1]) % 4  # Python logic on sizes only: resolved per input shape
        x = F.pad(x, (0, pad))
        return self.fc(torch.tanh(self.conv(x)).amax(dim=-1))


def bundled() -> nn.Module:
    from salience.zoo import load_model

    return load_model()


MODELS = {  # name: (model, input shape, adapter options)
    "small cnn": (lambda: SmallCNN().eval(), (8, 3, 12, 12), {}),
    "softplus mlp": (SoftplusNet, (8, 10), {}),
    "volume": (Volume, (4, 2, 6, 6, 6), {"channels_last": False}),
    "signal": (Signal, (8, 1, 30), {}),
    "bundled efficientnet": (bundled, (2, 3, 32, 32), {}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_captured_execution_equals_eager(name: str) -> None:
    build, shape, options = MODELS[name]
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    adapter = TorchAdapter(model, **options)  # capture is on by default
    verdict = adapter._capture(x)
    assert verdict is not None and verdict.note == CAPTURED and verdict.program is not None
    captured = adapter.forward(x, bulk=True)
    with torch.no_grad():
        eager = TorchAdapter(model, fuse=False, **options).forward(x, bulk=True)
    assert relative_error(captured, eager) < CAPTURE_BOUND


def test_a_model_that_branches_on_tensor_values_is_never_captured() -> None:
    model = BranchesOnValues().eval().double()  # float64: what differs is the path, not rounding
    adapter = TorchAdapter(model)
    bright, dark = torch.rand(8, 3, 6, 6).double(), -torch.rand(8, 3, 6, 6).double()
    for x in (bright, dark):
        verdict = adapter._capture(x)
        assert verdict is not None and verdict.program is None
        assert "branches on tensor values" in verdict.note
        with torch.no_grad():
            assert relative_error(adapter.forward(x, bulk=True), model(x)) < 1e-12


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_explanations_of_a_branching_model_are_right_on_both_sides(sign: float) -> None:
    """Occlusion (256 windows: a long run) on each side of the branch equals occlusion by the
    plain model, and the info says why it ran eagerly."""
    model = BranchesOnValues().eval().double()
    x = sign * torch.rand(1, 3, 16, 16, dtype=torch.float64)
    options = {"method": "occlusion", "window": 1, "stride": 1, "target": 1}
    found = salience.explain(model, x, **options, chunk_size=64)
    assert found.info["execution"].startswith("eager: its forward branches on tensor values")
    expected = torch.zeros(16, 16, dtype=torch.float64)
    with torch.no_grad():
        base = model(x)[0, 1]
        for i in range(16):
            for j in range(16):
                occluded = x.clone()
                occluded[..., i, j] = 0
                expected[i, j] = base - model(occluded)[0, 1]
    assert relative_error(found.map(0, 0).double(), expected) < 1e-6  # map stored in float32


@pytest.fixture(autouse=True)
def every_long_run_is_worth_capturing(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the capture itself: let runs of tiny models ask for it."""
    from salience.methods import masking

    monkeypatch.setattr(masking, "CAPTURE_WORTH_SECONDS", 0.0)


def test_a_run_too_short_to_pay_for_a_capture_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    from salience.methods import masking

    monkeypatch.setattr(masking, "CAPTURE_WORTH_SECONDS", 3600.0)  # longer than any run here
    model = SmallCNN().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    options = {"method": "occlusion", "window": 1, "stride": 1, "target": 0}  # 256 windows
    found = salience.explain(TorchAdapter(model), x, **options, chunk_size=48)
    assert found.info["execution"].startswith("eager: the 256 passes take about")
    assert found.info["execution"].endswith("less than a capture would save")
    monkeypatch.setattr(masking, "CAPTURE_WORTH_SECONDS", 5.0)
    assert masking.worth_capturing(1.0, 8, 80) and not masking.worth_capturing(0.1, 8, 80)


def test_the_info_of_a_captured_run_says_so_and_the_last_short_chunk_runs_eagerly() -> None:
    model = SmallCNN().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    options = {"method": "occlusion", "window": 1, "stride": 1, "target": 0}  # 256 windows
    captured = salience.explain(TorchAdapter(model), x, **options, chunk_size=48)  # 5×48 + 16
    eager = salience.explain(TorchAdapter(model, fuse=False), x, **options, chunk_size=48)
    assert captured.info["execution"] == CAPTURED
    assert eager.info["execution"] == "eager: capture is off (fuse=False)"
    assert relative_error(captured.attributions, eager.attributions) < CAPTURE_BOUND


def test_capture_is_rebuilt_when_the_weights_change() -> None:
    model = SmallCNN().eval()
    x = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    adapter = TorchAdapter(model)
    first = adapter._fused(x)
    assert first is not None and adapter._fused(x) is first
    with torch.no_grad():
        model.fc.weight.mul_(-3)
        expected = model(x)
    assert adapter._fused(x) is not first
    assert relative_error(adapter.forward(x, bulk=True), expected) < CAPTURE_BOUND
