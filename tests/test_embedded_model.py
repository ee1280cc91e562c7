"""Methods on the bundled EfficientNet-Lite0: the fast path is exact, the guided rule applies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

import salience
from salience.zoo import SAMPLE_IMAGES, load_model, model_spec


@pytest.fixture(scope="module")
def cat() -> Tensor:
    return model_spec().preset.prepare(SAMPLE_IMAGES["chelsea"]()).tensor


def relative_gap(ours: Tensor, reference: Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def l2_gap(ours: Tensor, reference: Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def test_folded_inference_copy_is_as_exact_as_float32_allows(cat: Tensor) -> None:
    """In float64 the folded, channels-last copy is the model itself (folding BatchNorm is exact
    arithmetic: a fold bug shows as a gap far above float64 rounding). In float32 any reordering
    of the operations flips a few units' gradients at ReLU6 kinks (how many depends on the CPU's
    kernels: 0.3% (L2) of the map on some, 1e-6 on others), so the float32 fast path is held to
    the bound the float32 model itself meets against the float64 map."""
    model = load_model()
    exact_model = copy.deepcopy(model).double()
    exact = salience.explain(salience.TorchAdapter(exact_model, inference_copy=False), cat.double())
    folded = salience.explain(exact_model, cat.double())
    assert l2_gap(folded.attributions.double(), exact.attributions.double()) < 2**-20
    fast = salience.explain(model, cat, method="gradient")
    plain = salience.explain(salience.TorchAdapter(model, inference_copy=False), cat)
    assert torch.equal(fast.targets, plain.targets) and torch.equal(fast.targets, exact.targets)
    assert l2_gap(plain.attributions, exact.attributions) < 0.01
    assert l2_gap(fast.attributions, exact.attributions) < 0.01


def test_guided_backprop_reaches_the_functional_relu6_of_the_model(cat: Tensor) -> None:
    model = load_model()
    activations = [m for m in model.modules() if isinstance(m, torch.nn.ReLU | torch.nn.ReLU6)]
    assert activations == [model._head_activation]  # the blocks' ReLU6 are all functional
    guided = salience.explain(model, cat, method="guided_backprop").attributions
    plain = salience.explain(model, cat, method="gradient").attributions
    assert relative_gap(guided, plain) > 0.5
    # guided maps are far sparser in sign: negative evidence is cut at every ReLU6
    assert float((guided > 0).float().mean()) != pytest.approx(float((plain > 0).float().mean()))
