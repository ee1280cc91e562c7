"""The private inference copy: exact BatchNorm folding, never stale, user's model untouched."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import SmallCNN
from salience.adapters.inference_copy import build_inference_copy


def test_folded_copy_has_no_batchnorm_and_equal_outputs(
    small_cnn: SmallCNN, images: Tensor
) -> None:
    copy = build_inference_copy(small_cnn, images)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in small_cnn.modules())
    small_cnn.eval()
    with torch.no_grad():
        torch.testing.assert_close(copy(images), small_cnn(images), atol=1e-5, rtol=1e-4)


def test_maps_equal_with_and_without_copy(small_cnn: SmallCNN, images: Tensor) -> None:
    for method in ("gradient", "guided_backprop"):
        fast = salience.explain(small_cnn, images, method=method).attributions
        plain = salience.explain(
            salience.TorchAdapter(small_cnn, inference_copy=False), images, method=method
        ).attributions
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)


def test_copy_is_rebuilt_when_weights_change(small_cnn: SmallCNN, images: Tensor) -> None:
    adapter = salience.TorchAdapter(small_cnn)
    explainer = salience.Gradient(adapter)
    explainer(images, target=0)
    with torch.no_grad():
        small_cnn.fc.weight.mul_(-2.0)  # an in-place update, as an optimizer step does
    after = explainer(images, target=0).attributions
    reference = salience.Gradient(salience.TorchAdapter(small_cnn, inference_copy=False))
    torch.testing.assert_close(
        after, reference(images, target=0).attributions, atol=1e-5, rtol=1e-4
    )
    small_cnn.bn2.running_var.fill_(4.0)  # a buffer change too
    after = explainer(images, target=0).attributions
    torch.testing.assert_close(
        after, reference(images, target=0).attributions, atol=1e-5, rtol=1e-4
    )


class SkipFromPreNorm(nn.Module):
    """The conv output feeds both the BatchNorm and a skip: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_var.fill_(9.0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return (self.bn(y) + y).mean(dim=(2, 3))


def test_folding_is_skipped_when_it_would_change_outputs(images: Tensor) -> None:
    model = SkipFromPreNorm()
    with pytest.warns(RuntimeWarning, match="unfolded copy"):
        copy = build_inference_copy(model, images)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(copy(images), model(images), atol=1e-5, rtol=1e-4)


class Uncopyable(SmallCNN):
    attempts = 0

    def __deepcopy__(self, memo: dict) -> None:
        Uncopyable.attempts += 1
        raise TypeError("cannot pickle '_thread.lock' object")


def test_uncopyable_model_falls_back_to_the_model_itself(images: Tensor) -> None:
    model = Uncopyable()
    with pytest.warns(RuntimeWarning, match="running the model itself"):
        fast = salience.explain(model, images).attributions
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once; not tried again for the same weights
        again = salience.explain(model, images).attributions
    assert Uncopyable.attempts == 1
    plain = salience.explain(salience.TorchAdapter(model, inference_copy=False), images)
    torch.testing.assert_close(fast, plain.attributions)
    torch.testing.assert_close(again, plain.attributions)


def test_copy_is_built_once_per_weights_version_across_calls(
    images: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from salience.adapters import inference_copy

    builds = []
    original = inference_copy._build

    def counting(*args: object, **kwargs: object) -> tuple[nn.Module, bool]:
        builds.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference_copy, "_build", counting)
    model = SmallCNN()
    for _ in range(3):
        salience.explain(model, images)  # a new adapter each call
    assert len(builds) == 1
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    salience.explain(model, images)
    assert len(builds) == 2


def test_cache_does_not_keep_the_model_alive(images: Tensor) -> None:
    model = SmallCNN()
    salience.explain(model, images)
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None
