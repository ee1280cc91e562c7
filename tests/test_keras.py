"""Keras 3 models on the torch backend: same maps as the torch model, user's model untouched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import Tensor

import salience
from model_factories import DigitsNet
from salience.adapters import as_adapter
from salience.adapters.keras import KerasAdapter, import_keras
from salience.cli import main
from salience.loading import LoadOptions, open_model
from salience.models.keras import load_keras_model

# Keras 3.15 calls __array__ without numpy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

try:
    keras = import_keras()  # sets KERAS_BACKEND=torch first
except ImportError:
    pytest.skip("Keras 3 is not installed (the keras extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8×8 digits as RGB images in [0, 1] (N, 8, 8, 3), and their labels."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    return np.repeat(images[..., None], 3, axis=-1), data.target


@pytest.fixture(scope="module")
def trained(digits: tuple[np.ndarray, np.ndarray]) -> object:
    """A Keras CNN trained a few steps on the digits; its output layer applies a softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    images, labels = digits
    model.fit(images[:256], labels[:256], batch_size=64, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module")
def saved(trained: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "digits.keras"
    trained.save(path)
    return path


def as_torch(model: object) -> DigitsNet:
    """The same network in torch, with the Keras weights (kernels HWIO → OIHW, dense IO → OI)."""
    net = DigitsNet().eval()
    layer = model.get_layer
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            kernel, bias = (torch.as_tensor(np.asarray(w)) for w in layer(name).get_weights())
            getattr(net, name)[0].weight.copy_(kernel.permute(3, 2, 0, 1))
            getattr(net, name)[0].bias.copy_(bias)
        kernel, bias = (torch.as_tensor(np.asarray(w)) for w in layer("dense").get_weights())
        net.fc.weight.copy_(kernel.T)
        net.fc.bias.copy_(bias)
    return net


@pytest.fixture(scope="module")
def batch(digits: tuple[np.ndarray, np.ndarray]) -> Tensor:
    return torch.from_numpy(digits[0][300:305]).permute(0, 3, 1, 2).contiguous()


def test_gradient_maps_equal_the_torch_model(trained: object, saved: Path, batch: Tensor) -> None:
    net = as_torch(trained)
    adapter = open_model(str(saved)).adapter
    assert isinstance(adapter, KerasAdapter) and adapter.stripped_softmax
    assert torch.allclose(adapter.forward(batch), net(batch), atol=1e-5)  # logits, not softmax
    for method, options in [
        ("gradient", {}),
        ("guided_backprop", {}),
        ("integrated_gradients", {"steps": 8}),
        ("gradcam", {"layer": "conv2"}),
        ("gradcam", {"layer": "conv1"}),
        ("ablationcam", {"layer": "conv2"}),
    ]:
        for target in (None, 4):
            expected = salience.explain(net, batch, method=method, target=target, **options)
            actual = salience.explain(adapter, batch, method=method, target=target, **options)
            assert torch.equal(actual.targets, expected.targets), method
            assert torch.allclose(actual.attributions, expected.attributions, atol=1e-5), method


def test_the_users_model_is_not_changed(trained: object, batch: Tensor) -> None:
    weights = [np.array(w) for w in trained.get_weights()]
    flags = [variable.value.requires_grad for variable in trained.weights]
    before = trained(batch.permute(0, 2, 3, 1)).detach()
    adapter = as_adapter(trained)
    assert isinstance(adapter, KerasAdapter)
    salience.explain_all(adapter, batch, ["gradient", "gradcam", "guided_backprop"], layer="conv2")
    with pytest.raises(LookupError):
        salience.explain(adapter, batch, method="gradcam", layer="conv9")
    assert trained.get_layer("dense").activation.__name__ == "softmax"
    after = trained.get_weights()
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(weights, after, strict=True))
    assert [variable.value.requires_grad for variable in trained.weights] == flags
    assert all(not layer._forward_hooks for layer in trained.layers)
    assert torch.equal(trained(batch.permute(0, 2, 3, 1)).detach(), before)


def test_the_private_copy_follows_new_weights(trained: object, batch: Tensor) -> None:
    model = keras.models.clone_model(trained)
    model.set_weights(trained.get_weights())
    adapter = KerasAdapter(model)
    first = adapter.forward(batch)
    bias = model.get_layer("dense").bias
    bias.assign(bias.value + 1.0)
    assert torch.allclose(adapter.forward(batch), first + 1.0, atol=1e-5)


def test_layers_are_listed_with_keras_names(
    saved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["layers", str(saved), "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("layers of digits.keras on a 1×3×8×8 input")
    names = [line[2:].split()[0] for line in lines[1:]]
    assert names == ["conv1", "conv2", "pool", "dense"]
    assert lines[2].startswith("* conv2") and "Conv2D" in lines[2] and "16×8×8" in lines[2]


def test_explain_a_keras_file_from_the_command_line(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 16, 3), np.uint8)).save(photo)
    out = tmp_path / "out"
    argv = [
        "explain",
        str(photo),
        "--model",
        str(saved),
        "--method",
        "gradcam",
        "--layer",
        "conv2",
        "--scale",
        str(1 / 255),
        "-o",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert "top-5 predictions of digits.keras" in capsys.readouterr().out
    saved_map = np.load(out / "photo_gradcam.npz")
    info = json.loads((out / "photo_gradcam.json").read_text())
    assert info["info"] == {"layer": "conv2", "feature_shape": [16, 8, 8]}
    # The map on disk is the map of the photo prepared as the flags say: 8×8, pixels / 255.
    loaded = open_model(str(saved), LoadOptions(scale=1 / 255))
    assert loaded.preset.crop == (8, 8) and loaded.preset.std == pytest.approx((1.0,) * 3)
    image = loaded.preset.prepare(photo)
    expected = salience.explain(loaded.adapter, image.tensor, method="gradcam", layer="conv2")
    assert np.allclose(saved_map["attributions"], expected.attributions.numpy(), atol=1e-6)


def test_legacy_h5_files_load(trained: object, tmp_path: Path, batch: Tensor) -> None:
    path = tmp_path / "digits.h5"
    trained.save(path)
    adapter = open_model(str(path)).adapter
    assert torch.allclose(adapter.forward(batch), as_torch(trained)(batch), atol=1e-5)


def test_bad_keras_files_give_one_line_errors(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(saved.read_bytes()[:500])
    with pytest.raises(ValueError) as caught:
        open_model(str(truncated))
    assert "cannot be read as a Keras 3 model" in str(caught.value)
    assert "model.save('model.keras')" in str(caught.value) and "\n" not in str(caught.value)

    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(ImportError, match=r"imported with the tensorflow backend.*KERAS_BACKEND"):
        load_keras_model(saved)
    monkeypatch.undo()

    monkeypatch.setitem(sys.modules, "keras", None)  # as if keras were not installed
    with pytest.raises(ImportError) as caught:
        open_model(str(saved))
    assert str(caught.value).endswith("pip install 'salience[keras]'")
    assert main(["explain", "--model", str(saved), "-o", str(tmp_path / "out")]) == 2


def test_sanity_checks_randomize_a_copy_layer_by_layer(trained: object, batch: Tensor) -> None:
    from salience.evaluation.randomization import sanity_check

    weights = [np.array(w) for w in trained.get_weights()]
    adapter = as_adapter(trained)
    units = adapter.randomization_units(batch)
    assert [unit.name for unit in units] == ["dense", "conv2", "conv1"]
    copy = adapter.randomized(units[:1], seed=3).keras_model
    for layer in ("conv1", "conv2"):  # untouched below the randomized block
        for a, b in zip(
            trained.get_layer(layer).get_weights(), copy.get_layer(layer).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    kernel, bias = copy.get_layer("dense").get_weights()
    assert not np.array_equal(kernel, trained.get_layer("dense").get_weights()[0])
    assert np.array_equal(bias, np.zeros_like(bias))
    assert float(np.std(kernel)) == pytest.approx(np.sqrt(2 / 16), rel=0.3)  # He, fan-in 16

    first = sanity_check(trained, batch, ["gradient", "gradcam"], seed=1, progress=False)
    again = sanity_check(trained, batch, ["gradient", "gradcam"], seed=1, progress=False)
    assert first.steps == ("dense", "conv2", "conv1")
    np.testing.assert_array_equal(first.similarity, again.similarity)
    after = trained.get_weights()
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(weights, after, strict=True))
    with pytest.raises(LookupError, match="no layer 'conv9'"):
        adapter.randomization_units(batch, ["conv9"])
