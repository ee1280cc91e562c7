"""The fused forward-only copy: equal to the eager one, rebuilt, refused where tracing is unsafe."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import assert_same_state, model_state, relative_error
from salience.adapters.torch import TorchAdapter


def convnet() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.Hardtanh(0, 6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


class BranchesOnValues(nn.Module):
    """Takes another path when the input is dark: a trace would record only one path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        features = self.conv(x)
        if x.mean() < 0:
            features = -features
        return features.mean(dim=(2, 3))


@pytest.mark.parametrize("fusion_was_on", [False, True])
def test_fused_outputs_equal_the_eager_copy_and_the_global_switch_is_restored(
    fusion_was_on: bool,
) -> None:
    model, x = convnet(), torch.randn(12, 3, 16, 16)
    before = model_state(model)
    previous = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(fusion_was_on)
    try:
        adapter = TorchAdapter(model, fuse=True)
        assert adapter._fused(x[:4]) is not None
        fused = adapter.forward(x, chunk_size=4, bulk=True)
        assert torch.jit.onednn_fusion_enabled() is fusion_was_on
    finally:
        torch.jit.enable_onednn_fusion(previous)
    with torch.no_grad():
        expected = model(x)
    assert relative_error(fused, expected) < 1e-5
    assert_same_state(before, model_state(model))


def test_the_fused_copy_follows_the_users_weights() -> None:
    model, x = convnet(), torch.randn(4, 3, 16, 16)
    adapter = TorchAdapter(model, fuse=True)
    adapter.forward(x, bulk=True)
    with torch.no_grad():
        model[-1].weight.mul_(-2)
        expected = model(x)
    assert relative_error(adapter.forward(x, bulk=True), expected) < 1e-5


def test_a_model_that_branches_on_tensor_values_is_not_fused() -> None:
    model = BranchesOnValues().eval().double()  # float64: the bound is the path, not rounding
    adapter = TorchAdapter(model, fuse=True)
    bright, dark = torch.rand(2, 3, 8, 8).double(), -torch.rand(2, 3, 8, 8).double()
    assert adapter._fused(bright) is None  # export refuses the branch
    with torch.no_grad():
        assert relative_error(adapter.forward(dark, bulk=True), model(dark)) < 1e-12


def test_the_bundled_model_has_no_special_case() -> None:
    """The bundled model is captured as any user's module is: no flag says it is traceable."""
    from salience.loading import open_model
    from salience.zoo import model_spec

    assert not hasattr(model_spec(), "traceable")
    assert not hasattr(open_model(model_spec().name).adapter, "trusted_trace")


def test_a_model_with_forward_hooks_runs_eagerly_and_its_hooks_run() -> None:
    model, x = convnet(), torch.randn(4, 3, 16, 16)
    calls = []
    handle = model[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        verdict = TorchAdapter(model)._capture(x)
        assert verdict is not None and verdict.program is None and "hooks" in verdict.note
        TorchAdapter(model).forward(x, bulk=True)
    finally:
        handle.remove()
    assert calls  # the copy ran with the hook


def test_models_ending_in_softmax_run_eagerly_and_give_logits() -> None:
    model = nn.Sequential(convnet(), nn.Softmax(dim=1)).eval().double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    adapter = TorchAdapter(model, fuse=True)
    assert adapter._fused(x) is None
    with torch.no_grad():
        assert relative_error(adapter.forward(x, bulk=True), model[0](x)) < 1e-12


def test_occlusion_with_fusion_equals_occlusion_without() -> None:
    model, x = convnet(), torch.randn(1, 3, 16, 16)
    options = {"method": "occlusion", "window": 1, "stride": 1, "target": 2}  # 256 windows: bulk
    eager = salience.explain(TorchAdapter(model), x, **options)
    fused = salience.explain(TorchAdapter(model, fuse=True), x, **options)
    assert eager.info["windows"] == 256
    assert relative_error(fused.attributions, eager.attributions) < 1e-4
