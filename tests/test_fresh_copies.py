"""Edited models are explained as they are now: every cache of a model follows every edit.

Each edit is made after a first explanation built the caches (inference copy, layer table,
fan-out verdict, fused copy); the next explanation must equal, bit for bit, the explanation of a
deep copy of the edited model explained from scratch (same arithmetic, fresh caches). Each test
also checks that the edit changed the explanation, so a stale cache would fail it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import salience
from salience.adapters.fused import cached_fused
from salience.adapters.inference_copy import cached_inference_copy, model_state
from salience.adapters.torch import TorchAdapter


class Net(nn.Module):
    """Conv-BN-ReLU features with a linear head named ``fc``, as fine-tuning code expects."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for tensor in [*self.parameters(), *self.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.8 + 0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def images() -> Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def explained(model: nn.Module, method: str) -> Tensor:
    x = images().to(next(model.parameters()).dtype)
    options = {"layer": "features.3"} if method == "ablationcam" else {}
    return salience.explain(model, x, method=method, target=1, **options).attributions


def scale_output(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
    return output * 3.0


def optimizer_step(model: Net) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(images()).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def new_state_dict(model: Net) -> None:
    other = Net()
    with torch.no_grad():
        for tensor in other.parameters():
            tensor.mul_(-1.5)
    model.load_state_dict(other.state_dict())


EDITS: dict[str, Callable[[Net], object]] = {
    "parameter .data": lambda m: m.features[0].weight.data.mul_(2),
    "buffer .data": lambda m: m.features[1].running_var.data.fill_(4),
    "attribute": lambda m: setattr(m.features[1], "eps", 1.0),
    "replaced module": lambda m: m.features.__setitem__(2, nn.Tanh()),
    "replaced head": lambda m: setattr(m, "fc", nn.Linear(8, 4)),
    "hook added": lambda m: m.features[5].register_forward_hook(scale_output),
    "load_state_dict": new_state_dict,
    "optimizer step": optimizer_step,
    "to float64": lambda m: m.to(torch.float64),
}


@pytest.mark.parametrize("method", ["gradient", "gradcam", "ablationcam"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_changes_the_next_explanation_to_that_of_the_edited_model(
    edit: str, method: str
) -> None:
    model = Net().eval()
    before = explained(model, method)
    torch.manual_seed(2)  # the replaced head draws its weights
    EDITS[edit](model)
    after = explained(model, method)
    fresh = explained(copy.deepcopy(model), method)
    assert after.shape == fresh.shape
    assert not torch.equal(before, fresh), "the edit must change the explanation"
    assert torch.equal(after, fresh)


def test_the_explanation_equals_that_of_the_model_itself_after_an_edit() -> None:
    model = Net().eval()
    explained(model, "gradient")
    model.features[0].weight.data.mul_(2)
    after = explained(model, "gradient")
    plain = salience.explain(
        TorchAdapter(model, inference_copy=False), images(), method="gradient", target=1
    ).attributions
    # The copy folds BatchNorm: the same function, rounded differently (float32 ulps).
    torch.testing.assert_close(after, plain, rtol=1e-4, atol=1e-5)


def test_the_fused_copy_follows_a_data_edit() -> None:
    model, x = Net().eval(), images()
    adapter = TorchAdapter(model, fuse=True)
    first = adapter._fused(x)
    assert first is not None and adapter._fused(x) is first
    model.fc.weight.data.mul_(-1)
    assert adapter._fused(x) is not first
    with torch.no_grad():
        torch.testing.assert_close(adapter.forward(x, bulk=True), model(x), rtol=1e-4, atol=1e-5)


def test_an_unchanged_model_reuses_its_copies_and_its_state() -> None:
    model, x = Net().eval(), images()
    state = model_state(model)
    copy_ = cached_inference_copy(model, x, fold=True, channels_last=True)
    fused = cached_fused(model, (True, True), copy_, x)
    for _ in range(2):
        salience.explain(model, x, method="gradient")
        salience.explain(model, x, method="ablationcam", layer="features.3")
        assert model_state(model) is state
        assert cached_inference_copy(model, x, fold=True, channels_last=True) is copy_
        assert cached_fused(model, (True, True), copy_, x) is fused
    model.train()  # the copy runs in eval mode whatever the flag says
    assert model_state(model) is state
    with torch.no_grad():
        model.fc.bias.add_(0.0)  # a write of the same values: nothing to rebuild
    assert model_state(model) is state
    model.fc.bias.data[0] = float("nan")
    assert model_state(model) is not state
    assert cached_inference_copy(model, x, fold=True, channels_last=True) is not copy_


def test_nan_and_negative_zero_parameters_are_compared_bit_for_bit() -> None:
    model = Net()
    model.fc.bias.data[0] = float("nan")
    state = model_state(model)
    assert model_state(model) is state  # NaN equals itself bit for bit
    model.fc.bias.data[1] = -0.0
    zero = model_state(model)
    assert zero is not state
    model.fc.bias.data[1] = 0.0
    assert model_state(model) is not zero


def test_a_keras_model_is_explained_as_it_is_now() -> None:
    from salience.adapters.keras import import_keras, keras_module

    try:
        keras = import_keras()  # sets KERAS_BACKEND=torch first
    except ImportError as error:
        pytest.skip(str(error))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, name="dense"),
        ]
    )
    x = images()

    def gradient(m: object) -> Tensor:
        return salience.explain(m, x, method="gradient", target=1).attributions

    before = gradient(model)
    running = keras_module(model).keras_model
    assert torch.equal(gradient(model), before)
    assert keras_module(model).keras_model is running  # unchanged: the private copy is reused
    norm = model.get_layer("norm")
    norm.moving_variance.value.data.fill_(9.0)
    norm.epsilon = 0.5
    fresh = gradient(copy.deepcopy(model))
    assert not torch.equal(before, fresh)
    assert torch.equal(gradient(model), fresh)
    assert keras_module(model).keras_model is not running


def test_tensors_that_memcmp_cannot_compare_are_compared_too() -> None:
    module = nn.Module()
    module.weight = nn.Parameter(torch.randn(6, 4).t())  # not contiguous
    module.register_buffer("phases", torch.randn(3, dtype=torch.complex64))
    state = model_state(module)
    assert model_state(module) is state
    module.weight.data[0, 0] += 1.0
    changed = model_state(module)
    assert changed is not state and model_state(module) is changed
    module.phases.data[1] *= 1j
    assert model_state(module) is not changed
    square = nn.Module()
    square.weight = nn.Parameter(torch.randn(4, 4))
    state = model_state(square)
    square.weight.data = square.weight.data.t()  # the same bytes, read transposed
    assert model_state(square) is not state


def test_one_explanation_checks_the_model_once_however_many_passes_it_runs(monkeypatch) -> None:
    import salience.adapters.inference_copy as inference_copy

    model, x = Net().eval(), images()[:1]
    salience.explain(model, x, method="occlusion", window=2, stride=2, chunk_size=4)
    walks = []
    describe = inference_copy.describe
    monkeypatch.setattr(
        inference_copy, "describe", lambda *a, **k: walks.append(1) or describe(*a, **k)
    )
    explanation = salience.explain(model, x, method="occlusion", window=2, stride=2, chunk_size=4)
    assert explanation.info["windows"] == 16 and len(walks) == 1  # 4 chunks and the plain pass
    salience.explain_all(model, x, ["gradcam", "scorecam"], layer="features.3")
    assert len(walks) == 2


def test_a_weight_written_through_a_numpy_view_is_seen() -> None:
    model = Net().eval()
    before = explained(model, "gradient")
    model.fc.weight.detach().numpy()[:] *= -1.0  # no version counter sees this write
    after = explained(model, "gradient")
    assert not torch.equal(before, after)
    assert torch.equal(after, explained(copy.deepcopy(model), "gradient"))
