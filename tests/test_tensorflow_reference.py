"""One Keras model, two backends, one peer: salience on TensorFlow equals salience on torch, and
both equal tf-keras-vis (where tf-keras-vis follows the papers; where it does not, its formula
is computed here and the papers' too).

A small CNN is trained on sklearn's digits and saved once as ``.keras``. Keras chooses its
backend once per process, when it is first imported, and this process runs Keras on torch as
the other Keras tests do (``keras.config.set_backend`` reloads the Keras modules, after which no
model made before works: not robust). So the TensorFlow side runs in a process of its own
(``tensorflow_side.py``): it opens the file as ``--backend tensorflow`` does and runs salience's
methods and tf-keras-vis' ``Saliency`` (with and without SmoothGrad, on the noise salience
draws), ``Gradcam``, ``GradcamPlusPlus`` and ``Scorecam`` on the layer ``conv2``.

Tolerances: every map is computed in float32 from the same weights and inputs; the two backends
and tf-keras-vis differ in the order of float sums only (about 1e-7 relative per operation over
a network three layers deep), so after min-max normalization to [0, 1] they agree to 1e-5;
raw maps are compared relative to their largest value with the same bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor

import salience
from conftest import relative_error
from salience.adapters.base import Need
from salience.adapters.keras import KerasAdapter, import_keras
from salience.models import open_model

keras = import_keras()  # before TensorFlow, which would import Keras on its own backend
pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras_vis")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LAYER = "conv2"
SEED, N_SAMPLES, NOISE = 3, 8, 0.2
TOLERANCE = 1e-5
METHODS = {
    "gradient": ("gradient", {}),
    "absolute": ("gradient", {"absolute": True}),
    "gradient_x_input": ("gradient_x_input", {}),
    "guided_backprop": ("guided_backprop", {}),
    "integrated_gradients": ("integrated_gradients", {"steps": 8}),
    "smoothgrad": (
        "smoothgrad",
        {"n_samples": N_SAMPLES, "noise": NOISE, "seed": SEED, "absolute": True},
    ),
    "gradcam": ("gradcam", {"layer": LAYER}),
    "gradcam++": ("gradcam++", {"layer": LAYER}),
    "xgradcam": ("xgradcam", {"layer": LAYER}),
    "layercam": ("layercam", {"layer": LAYER}),
    "scorecam": ("scorecam", {"layer": LAYER}),
    "ablationcam": ("ablationcam", {"layer": LAYER}),
    "occlusion": ("occlusion", {"window": 4, "stride": 2}),
    "rise": ("rise", {"n_masks": 64, "grid": 4, "seed": SEED}),
}


def normalized(maps: np.ndarray | Tensor) -> np.ndarray:
    """Each map min-max scaled to [0, 1] (tf-keras-vis' ``normalize`` without its epsilon); a
    constant map (a CAM whose ReLU left nothing) is all zeros, as there."""
    array = np.asarray(maps, dtype=np.float64)
    flat = array.reshape(array.shape[0], -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    shape = (-1,) + (1,) * (array.ndim - 1)
    span = np.where(high > low, high - low, 1.0).reshape(shape)
    return (array - low.reshape(shape)) / span


def channel_max(maps: Tensor) -> np.ndarray:
    """``(N, 1, C, H, W)`` gradient maps as tf-keras-vis shows them: the largest of |g| over C."""
    return maps[:, 0].abs().amax(dim=1).numpy()


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """sklearn's 8×8 digits as RGB images in [0, 1] (N, 8, 8, 3), and their labels."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    return np.repeat(images[..., None], 3, axis=-1), data.target


@pytest.fixture(scope="module")
def saved(digits: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A functional CNN trained on the digits (a final softmax), saved once as ``.keras``."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=LAYER)(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    images, labels = digits
    model.fit(images[:512], labels[:512], batch_size=64, epochs=3, verbose=0)
    path = tmp_path_factory.mktemp("tensorflow") / "digits.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def batch(digits: tuple[np.ndarray, np.ndarray]) -> Tensor:
    """Four held-out digits, NCHW."""
    return torch.from_numpy(digits[0][-4:]).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def tensorflow_side(saved: Path, batch: Tensor) -> dict[str, np.ndarray]:
    """salience (TensorFlow backend) and tf-keras-vis on the same file, in a process of its own."""
    inputs, out = saved.with_suffix(".inputs.npz"), saved.with_suffix(".out.npz")
    np.savez(
        inputs,
        x=batch.numpy(),
        layer=LAYER,
        seed=SEED,
        n_samples=N_SAMPLES,
        noise=NOISE,
        methods=json.dumps(METHODS),
    )
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run(
        [sys.executable, str(here / "tensorflow_side.py"), str(saved), str(inputs), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as results:
        return dict(results)


@pytest.fixture(scope="module")
def torch_side(saved: Path) -> KerasAdapter:
    """The same file on Keras' torch backend."""
    adapter = open_model(str(saved)).adapter
    assert isinstance(adapter, KerasAdapter)
    return adapter


def test_the_file_ran_on_tensorflow(tensorflow_side: dict[str, np.ndarray]) -> None:
    assert str(tensorflow_side["adapter"]) == "TensorFlowAdapter"
    assert str(tensorflow_side["unchanged"]) == "softmax"  # the loaded model kept its softmax


@pytest.mark.parametrize("key", list(METHODS))
def test_tensorflow_backend_equals_torch_backend(
    key: str, tensorflow_side: dict[str, np.ndarray], torch_side: KerasAdapter, batch: Tensor
) -> None:
    method, options = METHODS[key]
    expected = salience.explain(torch_side, batch, method=method, **options)
    actual = torch.from_numpy(tensorflow_side[f"salience/{key}"])
    assert actual.shape == expected.attributions.shape
    assert torch.equal(torch.from_numpy(tensorflow_side["targets"]), expected.targets)
    assert relative_error(actual, expected.attributions) < TOLERANCE


def _both(
    key: str, tensorflow_side: dict[str, np.ndarray], torch_side: KerasAdapter, batch: Tensor
) -> list[Tensor]:
    method, options = METHODS[key]
    on_torch = salience.explain(torch_side, batch, method=method, **options).attributions
    return [torch.from_numpy(tensorflow_side[f"salience/{key}"]), on_torch]


@pytest.mark.parametrize("key", ["absolute", "smoothgrad"])
def test_saliency_equals_tf_keras_vis(
    key: str, tensorflow_side: dict[str, np.ndarray], torch_side: KerasAdapter, batch: Tensor
) -> None:
    """|gradient| and SmoothGrad of |gradient| on the same noise, max over channels."""
    peer = normalized(tensorflow_side[f"tkv/{key.replace('absolute', 'gradient')}"])
    for maps in _both(key, tensorflow_side, torch_side, batch):
        assert np.abs(normalized(channel_max(maps)) - peer).max() < TOLERANCE


def test_gradcam_equals_tf_keras_vis(
    tensorflow_side: dict[str, np.ndarray], torch_side: KerasAdapter, batch: Tensor
) -> None:
    peer = normalized(tensorflow_side["tkv/gradcam"])
    for maps in _both("gradcam", tensorflow_side, torch_side, batch):
        assert np.abs(normalized(maps[:, 0]) - peer).max() < TOLERANCE


def _layer_pass(adapter: KerasAdapter, batch: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
    """Activations A ``(N, C, H, W)``, gradients G of the target logit, and that logit S."""
    out = adapter.run(
        batch, lambda logits: logits.gather(1, targets[:, None]), Need(layer=LAYER, layer_grad=True)
    )
    return out.activations.double(), out.layer_grad[:, 0].double(), out.scores[:, 0].double()


def test_gradcam_plus_plus_follows_the_paper_and_tf_keras_vis_normalises_alpha(
    tensorflow_side: dict[str, np.ndarray], torch_side: KerasAdapter, batch: Tensor
) -> None:
    """Chattopadhay et al., eq. 19 with Y = exp(S): α = G² / (2 G² + Σ_s A · G³), the channel
    weight Σ_s α · relu(exp(S) G), the map relu(Σ_c w_c A_c); exp(S) scales each map and
    vanishes in the normalization. tf-keras-vis divides α by its spatial sum per channel (and
    keeps exp(S)): its formula is computed too, and equals its maps."""
    targets = torch.from_numpy(tensorflow_side["targets"]).reshape(-1)
    activations, gradients, logit = _layer_pass(torch_side, batch, targets)
    totals = activations.sum(dim=(2, 3), keepdim=True)
    second = gradients.square()
    denominator = 2 * second + totals * gradients**3
    alpha = torch.where(second != 0, second / torch.where(second != 0, denominator, 1), 0)
    exp_grad = logit.exp()[:, None, None, None] * gradients
    weights = (alpha * exp_grad.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
    paper = (weights * activations).sum(dim=1).clamp_min(0)
    for maps in _both("gradcam++", tensorflow_side, torch_side, batch):
        assert np.abs(normalized(maps[:, 0]) - normalized(paper)).max() < TOLERANCE

    alpha_sum = alpha.sum(dim=(2, 3), keepdim=True)
    normalised_alpha = alpha / torch.where(alpha_sum == 0, 1, alpha_sum)
    peer_weights = (normalised_alpha * exp_grad.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
    peer_formula = (peer_weights * activations).sum(dim=1).clamp_min(0)
    peer = normalized(tensorflow_side["tkv/gradcam++"])
    assert np.abs(normalized(peer_formula) - peer).max() < TOLERANCE
    assert np.abs(normalized(paper) - peer).max() > 100 * TOLERANCE  # the deviation is real


def test_scorecam_follows_the_paper_and_tf_keras_vis_subtracts_no_baseline(
    tensorflow_side: dict[str, np.ndarray], torch_side: KerasAdapter, batch: Tensor
) -> None:
    """Wang et al.: channel c's upsampled, min-max normalized activation masks the input; its
    weight is the target's softmax probability on the masked input minus that on the baseline
    (the zero image), and the map is relu(Σ_c w_c A_c). tf-keras-vis weighs by the probability
    itself (no baseline): its formula is computed too, and equals its maps. ``conv2`` has the
    input's 8×8 grid, so no upsampling differs between the three."""
    targets = torch.from_numpy(tensorflow_side["targets"]).reshape(-1)
    activations, _, _ = _layer_pass(torch_side, batch, targets)
    low = activations.amin(dim=(2, 3), keepdim=True)
    high = activations.amax(dim=(2, 3), keepdim=True)
    masks = torch.where(high > low, (activations - low) / torch.where(high > low, high - low, 1), 0)
    paper, peer_formula = [], []
    for n in range(batch.shape[0]):
        masked = batch[n : n + 1].double() * masks[n][:, None]  # (C, 3, H, W)
        probabilities = torch_side.forward(masked.float()).double().softmax(dim=1)
        own = probabilities[:, targets[n]]
        start = torch_side.forward(torch.zeros_like(batch[:1])).double().softmax(dim=1)
        paper.append(((own - start[0, targets[n]])[:, None, None] * activations[n]).sum(0))
        peer_formula.append((own[:, None, None] * activations[n]).sum(0))
    paper_maps = torch.stack(paper).clamp_min(0)
    for maps in _both("scorecam", tensorflow_side, torch_side, batch):
        assert np.abs(normalized(maps[:, 0]) - normalized(paper_maps)).max() < TOLERANCE
    peer = normalized(tensorflow_side["tkv/scorecam"])
    assert np.abs(normalized(torch.stack(peer_formula).clamp_min(0)) - peer).max() < TOLERANCE
