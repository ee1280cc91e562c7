"""Output kinds: a final sigmoid is cut like a softmax, and predictions read in the outputs' terms.

Known answers: for ``z = w·x + b`` followed by a sigmoid, the gradient of the explained logit is
``w`` and the gradient of ``score="probability"`` is ``σ'(z)·w = σ(z)(1 − σ(z))·w``; the printed
probability is the model's own ``σ(z)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.overrides import _get_current_function_mode_stack

import salience
from salience.adapters.base import Need
from salience.adapters.torch import TorchAdapter
from salience.cli import main
from salience.errors import InvalidInputError
from salience.loading import LoadOptions, open_model
from salience.outputs import (
    MULTILABEL,
    REGRESSION,
    SIGMOID,
    SOFTMAX,
    OutputKindError,
    check_output_kind,
    detect_output_kind,
    explained_score,
    prediction_lines,
    summarize,
)
from salience.targets import TargetError

HERE = Path(__file__).parent
FACTORY = "test_output_kinds:binary_net"


@pytest.fixture(autouse=True)
def _factories_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def binary_net() -> nn.Module:
    """A one-logit conv net ending in ``nn.Sigmoid`` (its weights come from a file)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
        nn.Sigmoid(),
    )


def linear_head(outputs: int, sigmoid: bool) -> tuple[nn.Module, nn.Linear]:
    torch.manual_seed(0)
    linear = nn.Linear(12, outputs).double()
    layers = [nn.Flatten(), linear] + ([nn.Sigmoid()] if sigmoid else [])
    return nn.Sequential(*layers), linear


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(1)).double()


def test_a_final_sigmoid_is_cut_and_the_logit_gradient_is_the_weight_row(x: Tensor) -> None:
    model, linear = linear_head(1, sigmoid=True)
    explanation = salience.explain(model, x, method="gradient")
    w = linear.weight.detach()[0].reshape(3, 2, 2)
    torch.testing.assert_close(
        explanation.attributions[:, 0].double(), w.expand(3, -1, -1, -1), rtol=1e-6, atol=1e-7
    )
    logits = linear(x.flatten(1))[:, 0].detach()
    assert explanation.score_kind == "logit"
    torch.testing.assert_close(explanation.scores[:, 0].double(), logits, rtol=1e-6, atol=1e-7)
    assert TorchAdapter(model).final_activation(x) == "sigmoid"
    assert detect_output_kind("sigmoid", 1) == SIGMOID


def test_probability_of_a_sigmoid_is_sigma_prime_times_the_weight(x: Tensor) -> None:
    model, linear = linear_head(1, sigmoid=True)
    explanation = salience.explain(model, x, method="gradient", score="probability")
    z = linear(x.flatten(1))[:, 0].detach()
    p = torch.sigmoid(z)
    w = linear.weight.detach()[0].reshape(3, 2, 2)
    expected = (p * (1 - p))[:, None, None, None] * w
    assert explanation.score_kind == "sigmoid"
    torch.testing.assert_close(explanation.scores[:, 0].double(), p, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        explanation.attributions[:, 0].double(), expected, rtol=1e-6, atol=1e-7
    )


def test_multilabel_gradients_are_weight_rows_and_probabilities_independent(x: Tensor) -> None:
    model, linear = linear_head(4, sigmoid=True)
    names = ["effusion", "nodule", "mass", "edema"]
    assert detect_output_kind(TorchAdapter(model).final_activation(x), 4) == MULTILABEL
    explanation = salience.explain(
        model, x, method="gradient", target="mass", class_names=names, score="probability"
    )
    z = linear(x.flatten(1)).detach()
    p = torch.sigmoid(z[:, 2])
    expected = (p * (1 - p))[:, None, None, None] * linear.weight.detach()[2].reshape(3, 2, 2)
    torch.testing.assert_close(
        explanation.attributions[:, 0].double(), expected, rtol=1e-6, atol=1e-7
    )
    assert list(explanation.target_names[0]) == ["mass"]
    logit = salience.explain(model, x, method="gradient", target="mass", class_names=names)
    torch.testing.assert_close(
        logit.attributions[0, 0].double(), linear.weight.detach()[2].reshape(3, 2, 2)
    )
    summary = summarize(z[0], MULTILABEL, names, k=3)
    sigmoids = torch.sigmoid(z[0])
    order = sigmoids.argsort(descending=True)[:3].tolist()
    assert [line.index for line in summary.top] == order
    assert [line.probability for line in summary.top] == pytest.approx(sigmoids[order].tolist())
    assert sum(torch.sigmoid(z[0]).tolist()) != pytest.approx(1.0)  # not a softmax


def test_a_regression_prints_its_value_and_has_no_probability(x: Tensor) -> None:
    model, linear = linear_head(1, sigmoid=False)
    assert detect_output_kind(TorchAdapter(model).final_activation(x), 1) == REGRESSION
    value = float(linear(x.flatten(1))[0, 0].detach())
    summary = summarize(torch.tensor([value]), REGRESSION, ["age"])
    assert summary.best.probability is None and summary.text() == f"age {value:.4g}"
    assert prediction_lines(summary, "fish", "net")[1] == f"  1. age {value:.4g}"
    explanation = salience.explain(model, x, method="gradient", output_kind="regression")
    assert explanation.score_kind == "value"
    with pytest.raises(OutputKindError, match="not defined for a regression") as error:
        salience.explain(model, x, method="gradient", score="probability", output_kind=REGRESSION)
    assert "\n" not in str(error.value)
    with pytest.raises(TargetError, match="output_kind='sigmoid'"):
        salience.explain(model, x, method="gradient", score="probability")


def test_bad_output_kinds_are_refused_in_one_line_listing_the_kinds() -> None:
    with pytest.raises(OutputKindError, match="softmax, sigmoid, multilabel, regression"):
        check_output_kind("binary")
    with pytest.raises(OutputKindError, match=r"choose sigmoid .* or regression"):
        summarize(torch.tensor([0.3]), SOFTMAX)
    with pytest.raises(OutputKindError, match="choose multilabel"):
        summarize(torch.tensor([0.3, 0.1]), SIGMOID)
    assert explained_score("probability", SOFTMAX) == "probability"
    assert explained_score("probability", MULTILABEL) == "sigmoid"


def test_a_binary_prediction_names_both_sides_and_is_the_models_sigma() -> None:
    z = torch.tensor([1.33])
    summary = summarize(z, SIGMOID, ["normal", "effusion"])
    p = float(torch.sigmoid(z))
    assert summary.text() == f"effusion {p:.1%}"
    assert [line.name for line in summary.top] == ["effusion", "normal"]
    assert summary.top[1].probability == pytest.approx(1 - p)
    low = summarize(-z, SIGMOID, ["effusion"], negative="normal")
    assert low.text() == f"normal {p:.1%}"
    assert "1 class 0 100.0%" not in "\n".join(prediction_lines(low, "x", "m"))


@pytest.fixture(scope="module")
def binary_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("binary")
    torch.manual_seed(3)
    model = binary_net()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "w.safetensors")
    (folder / "labels.txt").write_text("normal\neffusion\n")
    pixels = np.random.default_rng(0).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "xray.png")
    return {"folder": folder, "model": model}


def _printed_probability(stdout: str, name: str) -> float:
    line = next(line for line in stdout.splitlines() if f" {name} " in line)
    return float(line.split(f"{name} ")[1].split("%")[0]) / 100


def test_the_cli_prints_the_binary_probability_of_a_torch_model(
    binary_files: dict, capsys: pytest.CaptureFixture
) -> None:
    folder = binary_files["folder"]
    options = LoadOptions(weights=str(folder / "w.safetensors"), classes=str(folder / "labels.txt"))
    loaded = open_model(FACTORY, options)
    assert (loaded.output_kind, loaded.class_names, loaded.negative_class) == (
        SIGMOID,
        ["effusion"],
        "normal",
    )
    image = loaded.preset.prepare(str(folder / "xray.png"))
    with torch.no_grad():
        p = float(binary_files["model"](image.tensor)[0, 0])  # the model's own sigmoid
    status = main(
        [
            "explain",
            str(folder / "xray.png"),
            "--model",
            FACTORY,
            "--weights",
            str(folder / "w.safetensors"),
            "--classes",
            str(folder / "labels.txt"),
            "--method",
            "gradient",
            "--quiet",
            "-o",
            str(folder / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "class 0 100.0%" not in out
    assert f"effusion {p:.1%}" in out and f"normal {1 - p:.1%}" in out
    assert _printed_probability(out, "effusion") == pytest.approx(p, abs=5e-4)


def test_output_kind_flag_and_preset_key_override_the_detection(
    binary_files: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = binary_files["folder"]
    weights = str(folder / "w.safetensors")
    loaded = open_model(FACTORY, LoadOptions(weights=weights, output_kind=REGRESSION))
    assert loaded.output_kind == REGRESSION and loaded.class_names == ["class 0"]
    sidecar = tmp_path / "p.preset.toml"
    sidecar.write_text('output_kind = "regression"\nlabels = ["risk"]\n')
    from_preset = open_model(FACTORY, LoadOptions(weights=weights, preset=str(sidecar)))
    assert from_preset.output_kind == REGRESSION
    sidecar.write_text('output_kind = "binary"\n')
    with pytest.raises(ValueError, match="output_kind must be one of softmax, sigmoid"):
        open_model(FACTORY, LoadOptions(weights=weights, preset=str(sidecar)))
    status = main(
        [
            "explain",
            str(folder / "xray.png"),
            "--model",
            FACTORY,
            "--weights",
            weights,
            "--output-kind",
            "softmax",
            "--method",
            "gradient",
            "-o",
            str(tmp_path / "o"),
        ]
    )
    captured = capsys.readouterr()
    assert status == 2 and "output kind softmax needs two or more outputs" in captured.err


def test_keras_sigmoid_is_cut_and_the_cli_prints_the_models_probability(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid", name="head"),
        ]
    )
    path = tmp_path / "xray.keras"
    model.save(path)
    (tmp_path / "labels.txt").write_text("normal\neffusion\n")
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "xray.png")
    loaded = open_model(str(path), LoadOptions(classes=str(tmp_path / "labels.txt")))
    assert loaded.output_kind == SIGMOID
    image = loaded.preset.prepare(str(tmp_path / "xray.png"))
    p = float(model.predict(image.tensor.permute(0, 2, 3, 1).numpy(), verbose=0)[0, 0])
    # The logit's gradient: that of the model's output divided by σ'(z) = p(1 - p).
    x = image.tensor.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x.permute(0, 2, 3, 1))[0, 0], x)
    explanation = salience.explain(loaded.adapter, image.tensor, method="gradient")
    # float32 arithmetic on both sides; the division by p(1-p) ≈ 0.2 scales the rounding by 5
    torch.testing.assert_close(
        explanation.attributions[0, 0], grad[0] / (p * (1 - p)), rtol=1e-4, atol=1e-6
    )
    status = main(
        [
            "explain",
            str(tmp_path / "xray.png"),
            "--model",
            str(path),
            "--method",
            "gradient",
            "--classes",
            str(tmp_path / "labels.txt"),
            "-o",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    side, q = ("effusion", p) if p >= 0.5 else ("normal", 1 - p)
    assert f"{side} {q:.1%}" in out and "100.0%" not in out
    assert _printed_probability(out, "effusion") == pytest.approx(p, abs=5e-4)


def test_server_predictions_and_batch_records_read_the_binary_output(binary_files: dict) -> None:
    from salience.runner import JobSpec
    from salience.runner.inputs import BatchItem
    from salience.runner.results import table_rows
    from salience.runner.work import ItemWorker, Task
    from salience.server.service import predictions

    folder = binary_files["folder"]
    options = LoadOptions(weights=str(folder / "w.safetensors"), classes=str(folder / "labels.txt"))
    loaded = open_model(FACTORY, options)
    image = loaded.preset.prepare(str(folder / "xray.png"))
    with torch.no_grad():
        p = float(binary_files["model"](image.tensor)[0, 0])
    found = predictions(loaded, image)
    assert {line["name"]: line["probability"] for line in found} == pytest.approx(
        {"effusion": p, "normal": 1 - p}
    )
    assert found[0]["text"] == (f"effusion {p:.1%}" if p >= 0.5 else f"normal {1 - p:.1%}")
    worker = ItemWorker(JobSpec(model=FACTORY, load_options=options, methods=("gradient",)))
    item = BatchItem(path=str(folder / "xray.png"), key="xray", label=None)
    result = worker.process(Task(item, (folder / "xray.png").read_bytes()))
    side, q = ("effusion", p) if p >= 0.5 else ("normal", 1 - p)
    assert result.record["predicted_class"] == side
    assert result.record["probability"] == pytest.approx(q)
    (row,) = table_rows(
        [item], {"xray": result.record}, {}, loaded.class_names, methods=["gradient"], auc=False
    )
    assert row["probability"] == pytest.approx(q) and row["value"] is None


def test_masks_of_a_sigmoid_probability_are_weighed_by_sigma_not_a_softmax() -> None:
    from salience.methods.masking import weight_kind
    from salience.targets import Selection

    selection = Selection(torch.zeros(1, 1, dtype=torch.long))
    outputs = torch.zeros(1, 3)
    assert weight_kind(outputs, selection, "sigmoid", True, None) == "sigmoid"
    assert weight_kind(outputs, selection, "value", True, None) == "value"
    assert weight_kind(outputs, selection, "logit", True, None) == "probability"
    # the logit of a label is weighed by its own σ, never a softmax across labels
    assert weight_kind(outputs, selection, "logit", True, MULTILABEL) == "sigmoid"
    assert weight_kind(outputs[:, :1], selection, "logit", True, SIGMOID) == "sigmoid"
    assert weight_kind(outputs, selection, "logit", True, REGRESSION) == "logit"
    assert weight_kind(outputs, selection, "logit", False, MULTILABEL) == "logit"


# A mask's weight: σ of the target's logit for labels (given or detected from a cut final
# sigmoid), the softmax across classes for class logits (given or read from the outputs).
MASK_WEIGHTS = [
    pytest.param(False, MULTILABEL, torch.sigmoid, id="multilabel-given"),
    pytest.param(True, None, torch.sigmoid, id="multilabel-detected"),
    pytest.param(False, None, lambda z: torch.softmax(z, -1), id="softmax-read"),
    pytest.param(False, SOFTMAX, lambda z: torch.softmax(z, -1), id="softmax-given"),
]
TARGET = 2


@pytest.mark.parametrize(("sigmoid", "kind", "probability"), MASK_WEIGHTS)
def test_one_rise_mask_is_weighed_by_the_targets_probability_of_its_output_kind(
    x: Tensor, sigmoid: bool, kind: str | None, probability
) -> None:
    from salience.methods.perturbation import RISE

    model, linear = linear_head(4, sigmoid=sigmoid)
    rise = RISE(model, n_masks=1, seed=3)
    explanation = rise(x, TARGET, output_kind=kind)
    (mask,) = rise.mask_maker((2, 2), torch.device("cpu"), 1)(slice(0, 1)).double()
    with torch.no_grad():
        z = linear((x * mask).flatten(1))
    weight = probability(z)[:, TARGET]
    expected = weight.reshape(-1, 1, 1, 1) * mask / rise.keep
    # the map is σ or a softmax of float64 arithmetic, stored in float32: relative 2^-24 each
    torch.testing.assert_close(explanation.attributions.double(), expected, rtol=2**-23, atol=0.0)
    labels = probability is torch.sigmoid
    assert explanation.info["weights"] == ("sigmoid" if labels else "probability")


def conv_head(outputs: int) -> tuple[nn.Module, nn.Conv2d]:
    """A one-channel 1×1 convolution (the Score-CAM layer) and a linear head over its map."""
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(3, 1, 1).double(), nn.Linear(4, outputs).double()
    return nn.Sequential(conv, nn.Flatten(), linear), conv


@pytest.mark.parametrize(
    ("kind", "probability"),
    [
        pytest.param(MULTILABEL, torch.sigmoid, id="multilabel"),
        pytest.param(None, lambda z: torch.softmax(z, -1), id="softmax"),
    ],
)
def test_a_score_cam_channel_is_weighed_by_the_targets_probability_gain(
    x: Tensor, kind: str | None, probability
) -> None:
    model, conv = conv_head(4)
    explanation = salience.explain(
        model, x, method="scorecam", target=TARGET, layer="0", output_kind=kind
    )
    with torch.no_grad():
        features = conv(x)  # (N, 1, 2, 2): the one channel, already the input's size
        low = features.flatten(1).amin(1).reshape(-1, 1, 1, 1)
        high = features.flatten(1).amax(1).reshape(-1, 1, 1, 1)
        masked = model(x * (features - low) / (high - low))
        baseline = model(torch.zeros_like(x[:1]))
    gain = probability(masked)[:, TARGET] - probability(baseline)[:, TARGET]
    expected = (gain.reshape(-1, 1, 1, 1) * features).clamp_min(0)
    torch.testing.assert_close(explanation.attributions.double(), expected, rtol=2**-23, atol=0.0)


def test_bulk_passes_of_a_fused_adapter_also_give_the_logit() -> None:
    torch.manual_seed(0)
    model = binary_net().eval()
    x = torch.rand(4, 3, 8, 8)
    adapter = TorchAdapter(model, fuse=True)
    with torch.no_grad():
        logits = model[:-1](x)
    torch.testing.assert_close(adapter.forward(x, bulk=True), logits)


def test_deletion_of_a_binary_model_follows_its_sigmoid_probability() -> None:
    from salience.evaluation.faithfulness import deletion

    torch.manual_seed(0)
    model = binary_net().eval()
    x = torch.rand(1, 3, 8, 8)
    curve = deletion(model, x, torch.rand(1, 8, 8), target=0, pixels_per_step=64)
    with torch.no_grad():
        p = float(model(x)[0, 0])
    assert curve.score_kind == "sigmoid"
    assert float(curve.scores[0, 0]) == pytest.approx(p, rel=1e-5)


def test_the_cli_prints_a_regression_value_with_its_name(
    binary_files: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = binary_files["folder"]
    weights = str(folder / "w.safetensors")
    sidecar = tmp_path / "fish.preset.toml"
    sidecar.write_text('output_kind = "regression"\nlabels = ["age"]\n')
    loaded = open_model(FACTORY, LoadOptions(weights=weights, preset=str(sidecar)))
    image = loaded.preset.prepare(str(folder / "xray.png"))
    with torch.no_grad():  # the final sigmoid is cut whatever the kind: the value explained
        value = float(binary_files["model"][:-1](image.tensor)[0, 0])
    argv = ["explain", str(folder / "xray.png"), "--model", FACTORY, "--weights", weights]
    argv += ["--preset", str(sidecar), "--method", "gradient", "-o", str(tmp_path / "o")]
    assert main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"1. age {value:.4g}" in out and "%" not in out.split("wrote")[0]


class FunctionalHead(nn.Module):
    """``flatten → linear`` and then a final activation applied as a function in ``forward``."""

    def __init__(self, outputs: int, final: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(12, outputs).double()
        self.final = final

    def forward(self, x: Tensor) -> Tensor:
        z = self.linear(x.flatten(1))
        if self.final == "torch.sigmoid":
            return torch.sigmoid(z)
        if self.final == "Tensor.sigmoid":
            return z.sigmoid()
        if self.final == "F.softmax":
            return nn.functional.softmax(z, dim=1)
        if self.final == "Tensor.log_softmax":
            return z.log_softmax(dim=-1)
        return z.sigmoid() * 2  # a sigmoid that is not the output: nothing to cut


@pytest.mark.parametrize(
    ("final", "outputs", "cut"),
    [
        ("torch.sigmoid", 1, "sigmoid"),
        ("Tensor.sigmoid", 3, "sigmoid"),
        ("F.softmax", 3, "softmax"),
        ("Tensor.log_softmax", 3, "softmax"),
    ],
)
def test_a_final_activation_called_as_a_function_is_cut_like_a_module(
    x: Tensor, final: str, outputs: int, cut: str
) -> None:
    model = FunctionalHead(outputs, final)
    adapter = TorchAdapter(model)
    assert adapter.final_activation(x) == cut
    explanation = salience.explain(adapter, x, method="gradient", target=0)
    w = model.linear.weight.detach()[0].reshape(3, 2, 2)
    torch.testing.assert_close(
        explanation.attributions[:, 0].double(), w.expand(3, -1, -1, -1), rtol=1e-6, atol=1e-7
    )
    logits = model.linear(x.flatten(1))[:, 0].detach()
    torch.testing.assert_close(explanation.scores[:, 0].double(), logits, rtol=1e-6, atol=1e-7)


def test_a_sigmoid_inside_the_model_is_not_cut(x: Tensor) -> None:
    model = FunctionalHead(1, "inside")
    adapter = TorchAdapter(model)
    assert adapter.final_activation(x) is None
    explanation = salience.explain(adapter, x, method="gradient", target=0)
    z = model.linear(x.flatten(1))[:, 0].detach()
    slope = 2 * torch.sigmoid(z) * (1 - torch.sigmoid(z))  # d(2σ(z))/dz
    w = model.linear.weight.detach()[0].reshape(1, 3, 2, 2)
    expected = slope.reshape(-1, 1, 1, 1) * w
    torch.testing.assert_close(
        explanation.attributions[:, 0].double(), expected, rtol=1e-6, atol=1e-7
    )


def test_a_functional_final_softmax_keeps_long_runs_eager_and_says_why(x: Tensor) -> None:
    model = FunctionalHead(3, "F.softmax")
    adapter = TorchAdapter(model)
    verdict = adapter._capture(adapter.prepare_input(x))
    assert verdict is not None and verdict.program is None
    assert "softmax" in verdict.note
    outputs = adapter.forward(x, bulk=True)
    torch.testing.assert_close(outputs.double(), model.linear(x.flatten(1)).detach())


def test_watching_for_a_final_activation_leaves_no_mode_behind(x: Tensor) -> None:
    model = FunctionalHead(1, "torch.sigmoid")
    adapter = TorchAdapter(model)
    with pytest.raises(InvalidInputError, match="score function returned shape"):
        adapter.run(x, lambda logits: logits.reshape(-1), Need(input_grad=True))
    assert not _get_current_function_mode_stack()
    z = model.linear(x.flatten(1))
    torch.testing.assert_close(model(x), torch.sigmoid(z))  # the user's model still ends in σ
