"""The chest X-ray case: 1-channel models explained from the command line.

A small CNN is trained, in seconds, on synthetic X-ray-like grey images whose positive class has
a bright lesion at a known place. The same weights are saved as a Keras file (``Dense(1,
sigmoid)`` head), as a PyTorch state dict for a factory and as ONNX; each file's channel count
is read from the model (no ``--channels``), the image is a grey PNG, and the maps of
``salience explain`` must peak in the lesion. The Grad-CAM++ map must equal eq. 19 of
Chattopadhay et al. 2018, computed here with torch autograd on a float64 twin of the network.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from model_factories import XrayNet
from salience.cli import main
from salience.explanation import Explanation

try:
    from salience.adapters.keras import import_keras

    keras = import_keras()  # sets KERAS_BACKEND=torch first
except ImportError:  # pragma: no cover - the keras extra is not installed
    keras = None

SIZE = 64
LESION = (20, 44)
"""(row, column) of the lesion's centre on the 64×64 image."""
NEAR = 8.0
"""A map peaks in the lesion when its largest value lies this close (pixels) to the centre."""
TRAINING_IMAGES = 128


def xray_images(
    rng: np.random.Generator, count: int, *, lesion: bool, jitter: int = 2
) -> np.ndarray:
    """(count, 64, 64) grey images in [0, 1] at 8-bit levels: a soft chest-like glow and noise,
    plus, for the positive class, a bright Gaussian spot near :data:`LESION`."""
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    glow = 0.35 + 0.25 * np.exp(-(((columns - 32) / 22.0) ** 2 + ((rows - 34) / 26.0) ** 2))
    images = glow[None] + rng.normal(0.0, 0.04, (count, SIZE, SIZE))
    if lesion:
        centre_rows = LESION[0] + rng.integers(-jitter, jitter + 1, count)[:, None, None]
        centre_columns = LESION[1] + rng.integers(-jitter, jitter + 1, count)[:, None, None]
        distance = (rows[None] - centre_rows) ** 2 + (columns[None] - centre_columns) ** 2
        images = images + 0.5 * np.exp(-distance / (2 * 4.0**2))
    return np.round(np.clip(images, 0.0, 1.0) * 255) / 255


@pytest.fixture(scope="module")
def trained() -> XrayNet:
    """The network trained on 128 images, six epochs (it separates them after three or four)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    half = TRAINING_IMAGES // 2
    images = np.concatenate(
        [xray_images(rng, half, lesion=False), xray_images(rng, half, lesion=True)]
    )
    x = torch.tensor(images, dtype=torch.float32)[:, None]
    y = torch.cat([torch.zeros(half), torch.ones(half)])
    net = XrayNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(6):
        for batch in torch.randperm(TRAINING_IMAGES).split(32):
            loss = nn.functional.binary_cross_entropy_with_logits(net(x[batch])[:, 0], y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = float(((net(x)[:, 0] > 0).float() == y).float().mean())
    assert accuracy >= 0.95, f"the X-ray network did not learn the lesion (accuracy {accuracy})"
    return net.eval()


@pytest.fixture(scope="module")
def folder(trained: XrayNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xray.png (a positive case, lesion exactly at LESION), the model as xray.keras, xray.pt
    (state dict) and xray.onnx, and their preset: pixels / 255, no other normalization."""
    place = tmp_path_factory.mktemp("xray")
    image = xray_images(np.random.default_rng(1), 1, lesion=True, jitter=0)[0]
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(place / "xray.png")
    # the torch and ONNX twins end in the logit: the preset says it is one sigmoid decision
    (place / "xray.preset.toml").write_text(
        'mean = [0]\nstd = [1]\noutput_kind = "sigmoid"\nlabels = ["normal", "effusion"]\n'
    )
    torch.save(trained.state_dict(), place / "xray.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            trained,
            (torch.zeros(1, 1, SIZE, SIZE),),
            str(place / "xray.onnx"),
            input_names=["image"],
            dynamic_axes={"image": {0: "batch"}},
            dynamo=False,
        )
    if keras is not None:
        keras_twin(trained).save(place / "xray.keras")
    return place


def keras_twin(net: XrayNet) -> object:
    """The Keras model of the network's weights, with a sigmoid head, as a Keras user has it."""
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            layers.MaxPooling2D(),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3"),
            layers.GlobalMaxPooling2D(),
            layers.Dense(1, activation="sigmoid", name="effusion"),
        ]
    )
    for name in ("conv1", "conv2", "conv3"):
        conv = getattr(net, name)[0]
        kernel = conv.weight.detach().permute(2, 3, 1, 0).numpy()
        model.get_layer(name).set_weights([kernel, conv.bias.detach().numpy()])
    head = net.head
    model.get_layer("effusion").set_weights(
        [head.weight.detach().T.numpy(), head.bias.detach().numpy()]
    )
    return model


def explain(
    folder: Path, output: Path, methods: str, *model: str, capsys: pytest.CaptureFixture
) -> tuple[dict[str, Explanation], str]:
    """``salience explain xray.png --model ... --method METHODS``: the maps it wrote, by method,
    and what it printed."""
    image = str(folder / "xray.png")
    options = ["--method", methods, "-o", str(output), "--quiet"]
    capsys.readouterr()
    code = main(["explain", image, "--model", *model, *options])
    assert code == 0
    printed = capsys.readouterr().out
    return {m: Explanation.load(output / f"xray_{m}.npz") for m in methods.split(",")}, printed


def logit_of(net: XrayNet, image: Path) -> float:
    """The network's logit on ``image``, in float64."""
    pixels = torch.from_numpy(np.asarray(Image.open(image), dtype=np.float64) / 255.0)[None, None]
    with torch.no_grad():
        return float(copy.deepcopy(net).double()(pixels)[0, 0])


def assert_prints_the_models_probability(printed: str, net: XrayNet, image: Path) -> None:
    """The printed prediction is the positive side's σ(logit), as the model gives it."""
    probability = 1 / (1 + np.exp(-logit_of(net, image)))
    side = "effusion" if probability >= 0.5 else "normal"
    shown = probability if side == "effusion" else 1 - probability
    assert f"{side} {shown:.1%}" in " ".join(printed.split()), printed
    assert "100.0%" not in printed


def peak(explanation: Explanation) -> tuple[float, float]:
    """Where the map is largest, in pixels of the 64×64 input (cell centres for coarse maps)."""
    values = explanation.map(0, 0).double()
    values = values if values.ndim == 2 else values.sum(dim=0)
    row, column = np.unravel_index(int(values.argmax()), tuple(values.shape))
    scale_rows, scale_columns = SIZE / values.shape[0], SIZE / values.shape[1]
    return (row + 0.5) * scale_rows, (column + 0.5) * scale_columns


def assert_in_lesion(explanation: Explanation) -> None:
    row, column = peak(explanation)
    distance = float(np.hypot(row - LESION[0], column - LESION[1]))
    assert distance <= NEAR, f"{explanation.method} peaks at ({row}, {column}), not in the lesion"


def gradcam_plus_plus_eq19(net: XrayNet, image: Path, score_of_logit) -> torch.Tensor:
    """Grad-CAM++ of ``net`` on ``image`` by eq. 19 of the paper, in float64 with autograd.

    With ``Y = exp(S)``: ``α = (∂S/∂A)² / (2 (∂S/∂A)² + Σ_ab A_ab (∂S/∂A)³)`` (0 where the
    gradient is 0), ``w_k = Σ_ij α relu(∂Y/∂A)`` and the map ``relu(Σ_k w_k A_k)``; divided
    by the common factor exp(S), which salience leaves out.
    """
    twin = copy.deepcopy(net).double().eval()
    pixels = np.asarray(Image.open(image), dtype=np.float64) / 255.0
    x = torch.from_numpy(pixels)[None, None]
    captured: list[torch.Tensor] = []
    handle = twin.conv3.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        score = score_of_logit(twin(x)[0, 0])
    finally:
        handle.remove()
    activations = captured[0][0]
    (gradients,) = torch.autograd.grad(score, captured[0])
    gradients = gradients[0].detach()
    activations = activations.detach()
    totals = activations.sum(dim=(1, 2), keepdim=True)
    denominator = 2 * gradients**2 + totals * gradients**3
    alpha = torch.where(
        gradients != 0, gradients**2 / torch.where(denominator == 0, 1, denominator), 0
    )
    exp_score = torch.exp(score.detach())
    weights = (alpha * torch.relu(exp_score * gradients)).sum(dim=(1, 2))
    return torch.relu((weights[:, None, None] * activations).sum(dim=0)) / exp_score


def explained_score(explanation: Explanation, net: XrayNet, image: Path):
    """The logit, which salience explains: the final sigmoid (Keras) is cut before it."""
    logit = logit_of(net, image)
    recorded = float(explanation.scores[0, 0])
    assert explanation.score_kind == "logit"
    assert abs(logit - recorded) <= 1e-5 * max(1.0, abs(recorded)), (
        f"the explained score {recorded} is not the logit {logit}"
    )
    return lambda z: z


def assert_equals_eq19(explanation: Explanation, net: XrayNet, image: Path) -> None:
    """The map equals eq. 19 to 1e-4 of its largest value: the float32 passes (three 3×3
    convolutions of at most 144 terms, eps 6e-8) and the ratio of eq. 19 stay near 1e-6."""
    expected = gradcam_plus_plus_eq19(net, image, explained_score(explanation, net, image))
    actual = explanation.map(0, 0).double()
    assert actual.shape == expected.shape == (16, 16)
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((actual - expected).abs().max()) <= 1e-4 * scale


@pytest.mark.skipif(keras is None, reason="Keras 3 is not installed (the keras extra)")
def test_keras_xray_model_explained_from_the_command_line(
    folder: Path, trained: XrayNet, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    maps, printed = explain(
        folder,
        tmp_path,
        "gradcam++,scorecam",
        str(folder / "xray.keras"),
        "--layer",
        "conv3",
        capsys=capsys,
    )
    assert_prints_the_models_probability(printed, trained, folder / "xray.png")
    assert_in_lesion(maps["gradcam++"])
    assert_in_lesion(maps["scorecam"])
    assert_equals_eq19(maps["gradcam++"], trained, folder / "xray.png")


@pytest.mark.skipif(keras is None, reason="Keras 3 is not installed (the keras extra)")
def test_keras_layers_of_a_grayscale_model(folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["layers", str(folder / "xray.keras")]) == 0
    output = capsys.readouterr().out
    assert "on a 1×1×64×64 input" in output
    assert "conv3" in output


def test_torch_xray_model_explained_from_the_command_line(
    folder: Path, trained: XrayNet, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights = str(folder / "xray.pt")  # a module has no static input size: --size says it
    model = ["model_factories:xray_net", "--weights", weights, "--size", "64", "--layer", "conv3"]
    maps, printed = explain(folder, tmp_path, "gradcam++,scorecam", *model, capsys=capsys)
    assert_prints_the_models_probability(printed, trained, folder / "xray.png")
    assert_in_lesion(maps["gradcam++"])
    assert_in_lesion(maps["scorecam"])
    assert_equals_eq19(maps["gradcam++"], trained, folder / "xray.png")


def test_onnx_xray_model_explained_from_the_command_line(
    folder: Path, trained: XrayNet, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = [str(folder / "xray.onnx"), "--window", "8", "--stride", "4"]
    maps, printed = explain(folder, tmp_path, "occlusion", *model, capsys=capsys)
    assert_prints_the_models_probability(printed, trained, folder / "xray.png")
    assert_in_lesion(maps["occlusion"])


@pytest.mark.skipif(keras is None, reason="Keras 3 is not installed (the keras extra)")
def test_keras_refusal_of_the_channels_is_one_line_with_the_fix(
    folder: Path, capsys: pytest.CaptureFixture
) -> None:
    command = ["layers", str(folder / "xray.keras"), "--channels", "3"]
    assert main(command) != 0
    error = capsys.readouterr().err.strip()
    assert "expected axis -1 of input shape to have value 1" in error
    assert "received input with shape (1, 64, 64, 3)" in error
    assert "--channels 1" in error and "\n" not in error
