"""TensorFlow models natively: a tf_keras model equals its torch twin under every method, is
never changed, and SavedModels and tf_keras files open from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import relative_error
from salience.adapters import as_adapter
from salience.adapters.base import CAPABILITIES, Need
from salience.adapters.keras import import_keras
from salience.adapters.layers import LayerError
from salience.adapters.torch import TorchAdapter
from salience.cli import main
from salience.models import model_kind, open_model
from salience.models.safety import UntrustedFileError

import_keras()  # Keras 3 on torch, as the other tests run it, before TensorFlow imports it
tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")
from salience.adapters.tensorflow import (  # noqa: E402 (after the skip)
    SignatureAdapter,
    TensorFlowAdapter,
    tensorflow_state,
)
from salience.models.tensorflow import check_saved_model  # noqa: E402

TOLERANCE = 1e-5
"""float32 on both sides, three layers deep: sums in another order differ by ~1e-7 each."""
CLASSES = 4
METHODS = {
    "gradient": {},
    "gradient_x_input": {},
    "guided_backprop": {},
    "integrated_gradients": {"steps": 6},
    "smoothgrad": {"n_samples": 6, "seed": 2},
    "gradcam": {"layer": "relu2"},
    "gradcam++": {"layer": "relu2"},
    "hirescam": {"layer": "conv1"},
    "eigencam": {"layer": "relu2"},
    "guided_gradcam": {"layer": "relu2"},
    "scorecam": {"layer": "relu2"},
    "ablationcam": {"layer": "relu2"},
    "occlusion": {"window": 4, "stride": 2},
    "rise": {"n_masks": 32, "grid": 4, "seed": 1},
}


class Twin(nn.Module):
    """The torch network of :func:`tf_model`: conv1 (+ReLU), conv2, relu2, mean, probs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.probs = nn.Linear(8, CLASSES)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.softmax(self.probs(self.relu2(self.conv2(self.conv1(x))).mean(dim=(2, 3))))


def twin_of(model: object) -> Twin:
    """A :class:`Twin` with ``model``'s weights (kernels moved from HWIO / IO to torch's)."""
    twin = Twin()
    k1, b1, k2, b2, w, b = (torch.from_numpy(v) for v in model.get_weights())
    with torch.no_grad():
        twin.conv1[0].weight.copy_(k1.permute(3, 2, 0, 1))
        twin.conv1[0].bias.copy_(b1)
        twin.conv2.weight.copy_(k2.permute(3, 2, 0, 1))
        twin.conv2.bias.copy_(b2)
        twin.probs.weight.copy_(w.T)
        twin.probs.bias.copy_(b)
    return twin.eval()


def build(activation: str = "softmax", classes: int = CLASSES) -> object:
    layers = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(classes, activation=activation, name="probs")(x)
    return tf_keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def tf_model() -> object:
    """A tf_keras functional CNN (seeded weights) ending in a softmax."""
    tf_keras.utils.set_random_seed(0)
    return build()


@pytest.fixture(scope="module")
def batch() -> Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def snapshot(model: object) -> list[object]:
    """Everything of a tf_keras model a call could change: weights, flags, activations, calls."""
    return [
        [np.array(w) for w in model.get_weights()],
        [
            (layer.name, layer.trainable, getattr(layer, "activation", None))
            for layer in model.layers
        ],
        ["call" in vars(layer) for layer in model.layers],
        model.trainable,
    ]


def same(first: list[object], second: list[object]) -> bool:
    weights_equal = all(np.array_equal(a, b) for a, b in zip(first[0], second[0], strict=True))
    return weights_equal and first[1:] == second[1:]


def test_a_tf_keras_model_object_gets_the_tensorflow_adapter(tf_model: object) -> None:
    adapter = as_adapter(tf_model)
    assert isinstance(adapter, TensorFlowAdapter) and adapter.layout == "nhwc"
    assert all(isinstance(adapter, capability) for capability in CAPABILITIES)
    assert adapter.layer_names() == ["conv1", "conv2", "relu2", "pool", "probs"]
    assert adapter.stripped_softmax


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_equals_the_torch_twin(method: str, tf_model: object, batch: Tensor) -> None:
    actual = salience.explain(tf_model, batch, method=method, **METHODS[method])
    expected = salience.explain(
        TorchAdapter(twin_of(tf_model)), batch, method=method, **METHODS[method]
    )
    assert torch.equal(actual.targets, expected.targets)
    assert actual.attributions.shape == expected.attributions.shape
    assert relative_error(actual.attributions, expected.attributions) < TOLERANCE
    assert relative_error(actual.scores, expected.scores) < TOLERANCE


def test_several_targets_and_a_nonlinear_score_are_pulled_back_exactly(
    tf_model: object, batch: Tensor
) -> None:
    """The score is a torch function of the outputs; its gradient there is the cotangent."""
    twin = TorchAdapter(twin_of(tf_model))

    def score(logits: Tensor) -> Tensor:
        return torch.stack([logits.softmax(1)[:, 1], logits[:, 0] * logits[:, 2]], dim=1)

    need = Need(input_grad=True, layer="relu2", layer_grad=True)
    actual, expected = as_adapter(tf_model).run(batch, score, need), twin.run(batch, score, need)
    for name in ("scores", "input_grad", "activations", "layer_grad"):
        assert relative_error(getattr(actual, name), getattr(expected, name)) < TOLERANCE


def test_the_layer_table_is_channels_first_and_the_auto_layer_is_the_last_map(
    tf_model: object, batch: Tensor
) -> None:
    adapter = as_adapter(tf_model)
    table = {info.name: info.shape for info in adapter.layer_table(batch)}
    assert table["conv2"] == (1, 8, 8, 8) and table["pool"] == (1, 8)
    assert adapter.resolve_layer(None, batch) == "relu2"
    with pytest.raises(LayerError, match="did you mean 'conv2'"):
        salience.explain(tf_model, batch, method="gradcam", layer="conv3")


def test_the_users_model_is_unchanged_also_when_a_call_raises(
    tf_model: object, batch: Tensor
) -> None:
    before = snapshot(tf_model)
    for method in ("guided_backprop", "scorecam", "gradcam"):
        salience.explain(tf_model, batch, method=method, **METHODS[method])
    with pytest.raises(ValueError, match="out of range"):
        salience.explain(tf_model, batch, method="guided_backprop", target=9)
    with pytest.raises(RuntimeError, match="inside the score"):
        as_adapter(tf_model).run(
            batch,
            lambda _logits: (_ for _ in ()).throw(RuntimeError("inside the score")),
            Need(input_grad=True),
        )
    from salience.evaluation.randomization import sanity_check

    sanity_check(tf_model, batch, ["gradient"], seed=1, progress=False)
    assert same(before, snapshot(tf_model))
    assert tf_model.layers[-1].activation is tf_keras.activations.softmax


def test_a_final_sigmoid_is_cut_on_the_clone_only(batch: Tensor) -> None:
    tf_keras.utils.set_random_seed(1)
    model = build("sigmoid", classes=1)
    linear = build("linear", classes=1)
    linear.set_weights(model.get_weights())
    adapter = as_adapter(model)
    expected = linear(batch.permute(0, 2, 3, 1).numpy()).numpy()
    assert adapter.stripped_softmax
    np.testing.assert_allclose(adapter.forward(batch).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert model.layers[-1].activation is tf_keras.activations.sigmoid
    assert adapter.final_activation(batch) == "sigmoid"  # read as one binary decision
    assert as_adapter(build("linear", classes=1)).final_activation(batch) is None


def test_a_changed_model_is_explained_as_it_is_now(batch: Tensor) -> None:
    tf_keras.utils.set_random_seed(2)
    model = build()
    assert tensorflow_state(tf_keras, model) is tensorflow_state(tf_keras, model)
    first = salience.explain(model, batch, method="gradcam", layer="relu2")
    model.set_weights([w * 1.5 for w in model.get_weights()])
    second = salience.explain(model, batch, method="gradcam", layer="relu2")
    fresh = salience.explain(TorchAdapter(twin_of(model)), batch, method="gradcam", layer="relu2")
    assert relative_error(second.attributions, fresh.attributions) < TOLERANCE
    assert relative_error(first.attributions, second.attributions) > 0.1


def test_randomized_copies_leave_the_model_and_other_layers_alone(
    tf_model: object, batch: Tensor
) -> None:
    before = snapshot(tf_model)
    adapter = as_adapter(tf_model)
    units = adapter.randomization_units(batch)
    assert [unit.name for unit in units] == ["probs", "conv2", "conv1"]
    first = adapter.randomized(units[:1], seed=3).keras_model
    again = adapter.randomized(units[:1], seed=3).keras_model
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # seeded
    for layer in ("conv1", "conv2"):
        for a, b in zip(
            tf_model.get_layer(layer).get_weights(),
            first.get_layer(layer).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    kernel, bias = first.get_layer("probs").get_weights()
    assert not np.array_equal(kernel, tf_model.get_layer("probs").get_weights()[0])
    assert np.array_equal(bias, np.zeros_like(bias))
    assert same(before, snapshot(tf_model))


def test_import_keras_keeps_the_users_keras_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """``KERAS_BACKEND=tensorflow`` set by the user is never overwritten with ``torch``."""
    monkeypatch.delitem(sys.modules, "keras")  # as if Keras were not imported yet
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    import_keras()  # Keras' modules are loaded already: it still runs on torch here
    assert __import__("os").environ["KERAS_BACKEND"] == "tensorflow"


@pytest.fixture(scope="module")
def keras_saved_model(tf_model: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("savedmodel") / "digits_tf"
    tf_model.save(folder, save_format="tf")
    return folder


def explain_cli(model: str, folder: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> int:
    status = main(["explain", "--model", model, "-o", str(folder), "--quiet", *flags])
    capsys.readouterr()
    return status


def test_a_keras_saved_model_is_explained_from_the_cli(
    keras_saved_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert model_kind(str(keras_saved_model)) == "tensorflow"
    adapter = open_model(str(keras_saved_model)).adapter
    assert isinstance(adapter, TensorFlowAdapter)  # its Keras layers were reachable
    status = explain_cli(
        str(keras_saved_model), tmp_path, capsys, "--method", "gradient,gradcam", "--layer", "relu2"
    )
    assert status == 0
    meta = json.loads((tmp_path / "chelsea_gradcam.json").read_text())
    assert meta["model"] == "digits_tf" and meta["shape"][-2:] == [8, 8]


class Affine(tf.Module):
    """A serving signature without Keras layers: logits = flatten(x) · w."""

    def __init__(self, read_file: bool = False) -> None:
        super().__init__()
        self.w = tf.Variable(
            tf.random.stateless_normal((8 * 8 * 3, CLASSES), seed=(1, 2)), name="w"
        )
        self.read_file = read_file

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def __call__(self, x: object) -> dict[str, object]:
        logits = tf.reshape(x, (-1, 8 * 8 * 3)) @ self.w
        if self.read_file:
            size = tf.cast(tf.strings.length(tf.io.read_file("secrets.txt")), tf.float32)
            logits += size * 0.0
        return {"logits": logits}


def save_signature(module: tf.Module, folder: Path) -> Path:
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.__call__})
    return folder


def test_a_signature_gives_gradients_and_refuses_cams(
    tmp_path: Path, batch: Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    module = Affine()
    folder = save_signature(module, tmp_path / "affine")
    adapter = open_model(str(folder)).adapter
    assert isinstance(adapter, SignatureAdapter)
    found = tuple(isinstance(adapter, capability) for capability in CAPABILITIES)
    assert found == (True, True, False, False)  # gradients, no layers, no randomization
    explanation = salience.explain(adapter, batch, method="gradient", target=1)
    weights = torch.from_numpy(module.w.numpy()[:, 1]).reshape(8, 8, 3).permute(2, 0, 1)
    assert relative_error(explanation.attributions[:, 0], weights.expand(2, 3, 8, 8)) < 1e-6
    assert explain_cli(str(folder), tmp_path / "out", capsys, "--method", "gradient") == 0
    assert main(["explain", "--model", str(folder), "--method", "gradcam", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gradcam" in err


def test_a_signature_that_reads_files_is_refused(tmp_path: Path) -> None:
    folder = save_signature(Affine(read_file=True), tmp_path / "reader")
    with pytest.raises(UntrustedFileError, match="'ReadFile'"):
        check_saved_model(folder)
    with pytest.raises(UntrustedFileError, match="reaches files"):
        open_model(str(folder))


def test_a_tf_keras_h5_is_explained_from_the_cli_and_lambda_needs_trust(
    tf_model: object,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "digits.h5"
    tf_model.save(path)
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    assert model_kind(str(path)) == "tensorflow"
    status = explain_cli(str(path), tmp_path / "out", capsys, "--method", "guided_backprop")
    assert status == 0 and (tmp_path / "out" / "chelsea_guided_backprop.json").is_file()

    inputs = tf_keras.Input((8, 8, 3))
    outputs = tf_keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    lambda_path = tmp_path / "lambda.h5"
    tf_keras.Model(inputs, tf_keras.layers.GlobalAveragePooling2D()(outputs)).save(lambda_path)
    with pytest.raises(UntrustedFileError, match="Lambda"):
        open_model(str(lambda_path))
