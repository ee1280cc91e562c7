"""No hook survives and the user's model is unchanged after any call, for every method."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import SmallCNN, assert_same_state, model_state
from salience.registry import available
from salience.targets import TargetError

FAST_OPTIONS = {
    "smoothgrad": {"n_samples": 3},
    "vargrad": {"n_samples": 3},
    "integrated_gradients": {"steps": 3},
    "occlusion": {"window": 4, "stride": 4},
    "rise": {"n_masks": 8},
}
METHODS = available("method")


def explainer(method: str, model: nn.Module, inference_copy: bool) -> salience.Explainer:
    adapter = salience.TorchAdapter(model, inference_copy=inference_copy)
    return salience.make_explainer(adapter, method, **FAST_OPTIONS.get(method, {}))


class RaisesMidForward(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("boom inside the model")


def test_every_method_is_covered() -> None:
    assert {
        "gradient",
        "gradient_x_input",
        "guided_backprop",
        "smoothgrad",
        "vargrad",
        "integrated_gradients",
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "eigencam",
        "scorecam",
        "ablationcam",
        "guided_gradcam",
        "occlusion",
        "rise",
    } <= set(METHODS)


@pytest.mark.parametrize("inference_copy", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_model_unchanged_after_success(
    method: str, inference_copy: bool, small_cnn: SmallCNN, images: Tensor
) -> None:
    small_cnn.train()
    before = model_state(small_cnn)
    explanation = explainer(method, small_cnn, inference_copy)(images)
    shape = explanation.attributions.shape
    assert shape[:2] == (2, 1) and shape[-2:] == (12, 12)  # input grid, or the layer's (CAMs)
    assert torch.isfinite(explanation.attributions).all()
    assert_same_state(before, model_state(small_cnn))


@pytest.mark.parametrize("inference_copy", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_model_unchanged_after_bad_target(
    method: str, inference_copy: bool, small_cnn: SmallCNN, images: Tensor
) -> None:
    before = model_state(small_cnn)
    with pytest.raises(TargetError, match="out of range"):
        explainer(method, small_cnn, inference_copy)(images, target=99)
    assert_same_state(before, model_state(small_cnn))


@pytest.mark.parametrize("inference_copy", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_model_unchanged_after_module_raises(
    method: str, inference_copy: bool, small_cnn: SmallCNN, images: Tensor
) -> None:
    small_cnn.drop = RaisesMidForward()
    small_cnn.train()
    before = model_state(small_cnn)
    with pytest.raises(RuntimeError, match="boom inside the model"):
        explainer(method, small_cnn, inference_copy)(images)
    assert_same_state(before, model_state(small_cnn))


def test_explaining_runs_in_eval_mode_without_leaving_it(
    small_cnn: SmallCNN, images: Tensor
) -> None:
    small_cnn.train()
    first = salience.explain(small_cnn, images).attributions
    second = salience.explain(salience.TorchAdapter(small_cnn, inference_copy=False), images)
    torch.testing.assert_close(second.attributions, first, atol=1e-5, rtol=1e-4)  # dropout was off
    assert small_cnn.training and small_cnn.drop.training


def test_no_global_hooks_left(small_cnn: SmallCNN, images: Tensor) -> None:
    from torch.nn.modules import module as module_globals

    before = (len(module_globals._global_forward_hooks), len(module_globals._global_backward_hooks))
    for method in METHODS:
        explainer(method, small_cnn, False)(images)
    after = (len(module_globals._global_forward_hooks), len(module_globals._global_backward_hooks))
    assert before == after
