"""Opening models from anywhere: factories, state dicts, TorchScript, exports, preset sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import Tensor

import salience
from model_factories import DigitsNet
from salience.adapters.layers import LayerError
from salience.adapters.program import ExportedModule, ProgramAdapter
from salience.cli import main
from salience.loading import LoadOptions, model_kind, open_model
from salience.presets import ModelPreset, PresetOverrides, read_sidecar

HERE = Path(__file__).parent
FACTORY = "model_factories:digits_net"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


@pytest.fixture(autouse=True)
def _factories_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture(scope="module")
def net() -> DigitsNet:
    torch.manual_seed(0)
    return DigitsNet().eval()


@pytest.fixture(scope="module")
def digits() -> Tensor:
    """Five 8×8 digits as RGB batches in [0, 1]."""
    images = torch.tensor(load_digits().images[:5], dtype=torch.float32) / 16.0
    return images[:, None].expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="module")
def files(net: DigitsNet, digits: Tensor, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("models")
    paths = {
        "safetensors": folder / "net.safetensors",
        "pth": folder / "net.pth",
        "torchscript": folder / "net.pt",
        "export": folder / "net.pt2",
        "pickle": folder / "pickled.pt",
        "checkpoint": folder / "checkpoint.ckpt",
    }
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    save_file(state, paths["safetensors"])
    torch.save(state, paths["pth"])
    torch.save({"epoch": 3, "state_dict": state}, paths["checkpoint"])
    torch.jit.save(torch.jit.script(net), paths["torchscript"])
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, (digits,), dynamic_shapes=({0: batch},))
    torch.export.save(program, paths["export"])
    torch.save(net, paths["pickle"])
    return paths


def gradient_map(adapter: object, x: Tensor, target: int = 3) -> Tensor:
    return salience.explain(adapter, x, method="gradient", target=target).attributions


def test_every_torch_format_gives_the_same_gradient_map(
    net: DigitsNet, digits: Tensor, files: dict
) -> None:
    expected = gradient_map(net, digits)
    opened = {
        "factory + safetensors": open_model(
            FACTORY, LoadOptions(weights=str(files["safetensors"]))
        ),
        "state dict + factory": open_model(str(files["pth"]), LoadOptions(factory=FACTORY)),
        "checkpoint + factory": open_model(str(files["checkpoint"]), LoadOptions(factory=FACTORY)),
        "torchscript": open_model(str(files["torchscript"])),
        "export": open_model(str(files["export"])),
        "trusted pickle": open_model(str(files["pickle"]), LoadOptions(trust_pickle=True)),
    }
    for label, loaded in opened.items():
        actual = gradient_map(loaded.adapter, digits)
        assert torch.allclose(actual, expected, atol=1e-5, rtol=0), label
        assert loaded.class_names == [f"class {i}" for i in range(10)], label
    assert isinstance(opened["torchscript"].adapter, ProgramAdapter)
    assert isinstance(opened["export"].adapter.model, ExportedModule)
    # Black-box methods run on compiled programs too, with the same outputs.
    occlusion = {"method": "occlusion", "window": 2, "stride": 2, "target": 1}
    reference = salience.explain(net, digits, **occlusion).attributions
    for label in ("torchscript", "export"):
        actual = salience.explain(opened[label].adapter, digits, **occlusion).attributions
        assert torch.allclose(actual, reference, atol=1e-5), label


def test_formats_are_recognized_by_content(files: dict, tmp_path: Path) -> None:
    assert model_kind("efficientnet_lite0") == "bundled"
    assert model_kind(FACTORY) == "factory"
    renamed = {"torchscript": "script.bin", "export": "program.bin", "pth": "weights.bin"}
    expected = {"torchscript": "torchscript", "export": "export", "pth": "torch file"}
    for key, name in renamed.items():
        target = tmp_path / name
        target.write_bytes(files[key].read_bytes())
        assert model_kind(str(target)) == expected[key]
    assert model_kind("model.keras") == "keras"
    with pytest.raises(FileNotFoundError, match=r"no model file missing\.pt; give a bundled"):
        model_kind("missing.pt")


def test_a_pickled_model_is_refused_unless_trusted(files: dict) -> None:
    with pytest.raises(ValueError) as caught:
        open_model(str(files["pickle"]))
    message = str(caught.value)
    assert "\n" not in message
    assert "pickled model" in message and "arbitrary code execution" in message
    assert "state_dict()" in message and "--trust-pickle" in message


def test_programs_refuse_layer_methods_with_a_clear_error(files: dict, digits: Tensor) -> None:
    for key in ("torchscript", "export"):
        adapter = open_model(str(files[key])).adapter
        with pytest.raises(LayerError, match="cannot be hooked, so CAMs do not run on it"):
            salience.explain(adapter, digits, method="gradcam", layer="conv2")
        with pytest.raises(LayerError, match=r"--model package\.module:function --weights FILE"):
            salience.explain(adapter, digits, method="gradcam")
        with pytest.raises(ValueError, match="guided_relu backward rule"):
            salience.explain(adapter, digits, method="guided_backprop")


def test_an_exported_fixed_batch_runs_any_batch(
    net: DigitsNet, digits: Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(net, (digits[:2],)), path)
    loaded = open_model(str(path))
    assert loaded.preset.crop == (8, 8) and loaded.preset.resize_shorter == 8
    expected = gradient_map(net, digits)
    assert torch.allclose(gradient_map(loaded.adapter, digits), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"exported for inputs \(N, 3, 8, 8\), got \(1, 3, 9, 9\)"):
        loaded.adapter.forward(torch.zeros(1, 3, 9, 9))


def truncated(path: Path, folder: Path) -> Path:
    target = folder / f"truncated{path.suffix}"
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def test_bad_files_give_one_line_errors_that_say_what_to_do(files: dict, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a model")
    cases = [
        (str(truncated(files["torchscript"], tmp_path)), LoadOptions(), "it may be truncated"),
        (str(truncated(files["export"], tmp_path)), LoadOptions(), "torch.export.save"),
        (
            str(truncated(files["safetensors"], tmp_path)),
            LoadOptions(factory=FACTORY),
            "cannot be read as safetensors",
        ),
        (str(garbage), LoadOptions(), "is not a PyTorch file torch can read"),
        (str(files["pth"]), LoadOptions(), "holds weights only (a state dict); name the code"),
        ("no_such_module:build", LoadOptions(), "cannot import no_such_module"),
        ("model_factories:missing", LoadOptions(), "model_factories has no missing"),
        ("model_factories:not_a_model", LoadOptions(), "must return a torch.nn.Module or a"),
        (str(files["torchscript"]), LoadOptions(weights="w.pth"), "weights go with a factory"),
        ("efficientnet_lite0", LoadOptions(size=32), "size apply to model files and factories"),
    ]
    for model, options, message in cases:
        with pytest.raises((ValueError, LookupError, ImportError, TypeError)) as caught:
            open_model(model, options)
        assert message in str(caught.value), (model, str(caught.value))
        assert "\n" not in str(caught.value)


def test_weights_that_do_not_fit_the_factory(net: DigitsNet, tmp_path: Path) -> None:
    state = dict(net.state_dict())
    state["extra.weight"] = torch.zeros(2)
    state["fc.weight"] = torch.zeros(3, 16)
    del state["conv1.0.bias"]
    path = tmp_path / "wrong.safetensors"
    save_file(state, path)
    with pytest.raises(ValueError) as caught:
        open_model(FACTORY, LoadOptions(weights=str(path)))
    message = str(caught.value)
    assert "missing conv1.0.bias" in message and "unexpected extra.weight" in message
    assert "mis-shaped fc.weight (3, 16) vs (10, 16)" in message
    # Weights saved from DataParallel ("module." prefixes) fit.
    prefixed = {f"module.{key}": value for key, value in net.state_dict().items()}
    torch.save(prefixed, tmp_path / "parallel.pth")
    loaded = open_model(FACTORY, LoadOptions(weights=str(tmp_path / "parallel.pth")))
    assert torch.equal(loaded.adapter.model.fc.weight, net.fc.weight)


def test_a_sidecar_gives_the_preprocessing_and_flags_override_it(
    files: dict, tmp_path: Path
) -> None:
    model = tmp_path / "digits.pt"
    model.write_bytes(files["torchscript"].read_bytes())
    labels = tmp_path / "digits.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    (tmp_path / "digits.preset.toml").write_text(
        'size = 8\nresize = 10\ninterpolation = "nearest"\nscale = 0.00392156862745098\n'
        'labels = "digits.txt"\n'
    )
    loaded = open_model(str(model))
    assert (loaded.preset.crop, loaded.preset.resize_shorter) == ((8, 8), 10)
    assert loaded.preset.interpolation == "nearest"
    assert loaded.preset.mean == (0.0, 0.0, 0.0)
    assert loaded.preset.std == pytest.approx((1.0, 1.0, 1.0))
    assert loaded.class_names == [f"digit {i}" for i in range(10)]

    flags = LoadOptions(size=9, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    overridden = open_model(str(model), flags).preset
    assert (overridden.crop, overridden.resize_shorter) == ((9, 9), 9)
    assert (overridden.mean, overridden.std) == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))

    (tmp_path / "digits.preset.json").write_text(json.dumps({"size": 8}))
    with pytest.raises(ValueError, match=r"both describe digits\.pt; remove one"):
        open_model(str(model))
    explicit = open_model(str(model), LoadOptions(preset=str(tmp_path / "digits.preset.json")))
    assert explicit.preset.crop == (8, 8) and explicit.preset.std == (0.229, 0.224, 0.225)


def test_sidecar_errors_name_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "a.preset.toml"
    for text, message in [
        ("sise = 8", "unknown settings sise; known:"),
        ("size = -1", "size must be a positive integer"),
        ("mean = [0.5, 0.5]", "mean must be a list of 3 numbers"),
        ('channel_order = "gbr"', "channel_order must be one of rgb, bgr"),
        ("size = ", "is not valid TOML"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_sidecar(bad)
    with pytest.raises(ValueError, match="give std or scale, not both"):
        PresetOverrides(std=(1.0, 1.0, 1.0), scale=1.0).apply(ModelPreset(8, 8, (0,) * 3, (1,) * 3))


def test_bgr_models_get_reversed_channels() -> None:
    base = ModelPreset(None, None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    bgr = PresetOverrides(channel_order="bgr", mean=(0.3, 0.2, 0.1), scale=1.0).apply(base)
    assert bgr.mean == (0.1, 0.2, 0.3)  # given in the model's (BGR) order, kept as RGB
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red
    tensor = bgr.normalize(pixels)
    # (pixel / 255 − mean) × 255 per channel, in B, G, R order: blue 0, green 0, red 1.
    assert torch.allclose(tensor[0, :, 0, 0], torch.tensor([-0.3, -0.2, 0.9]) * 255)
    assert np.array_equal(bgr.denormalize(tensor), pixels)


def test_the_command_line_opens_factories_and_lists_layers(
    files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8)).save(photo)
    out = tmp_path / "out"
    status = main(
        [
            "explain",
            str(photo),
            "--model",
            FACTORY,
            "--weights",
            str(files["safetensors"]),
            "--size",
            "8",
            "--method",
            "gradient,gradcam",
            "-o",
            str(out),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "top-5 predictions of net.safetensors" in captured.out
    info = json.loads((out / "photo_gradcam.json").read_text())
    assert info["info"]["layer"] == "conv2"

    status = main(["layers", str(files["pth"]), "--factory", FACTORY, "--size", "8"])
    captured = capsys.readouterr()
    assert status == 0
    assert "* conv2" in captured.out and "16×8×8" in captured.out

    status = main(["layers", str(files["export"]), "--size", "8"])
    captured = capsys.readouterr()
    assert status == 2 and captured.err.count("\n") == 1
    assert "torch.export program: its layers run inside a compiled graph" in captured.err

    status = main(["explain", "--model", str(files["pickle"]), "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 2 and captured.err.count("\n") == 1 and "--trust-pickle" in captured.err
