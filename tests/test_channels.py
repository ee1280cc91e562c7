"""Images prepared as the model takes them: its channels, 16-bit range, windows, squashing."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from salience.cli import main
from salience.errors import InvalidInputError
from salience.images import ImageLoadError, ImagePreset
from salience.loading import LoadOptions, open_model
from salience.models.channels import conv_input_channels
from salience.models.presets import fallback_preset, read_sidecar

GREY = ImagePreset(resize_shorter=None, crop=None, mean=(0.0,), std=(1.0,), channels=1)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_colour_photos_become_the_luma_pillow_computes() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    prepared = GREY.prepare(rgb)
    assert prepared.tensor.shape == (1, 1, 5, 7)
    assert torch.equal(prepared.tensor[0, 0], torch.from_numpy(expected))
    # the pictures maps are drawn on are the grey image, in R, G and B
    grey = np.round(expected * 255).astype(np.uint8)
    for picture in (prepared.display, prepared.original):
        assert picture.shape == (5, 7, 3)
        assert all(np.array_equal(picture[..., c], grey) for c in range(3))


def test_transparency_goes_over_white_before_the_grey_levels() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red: luma 0.299 · 255 = 76
    rgba[1, 1] = (0, 0, 0, 0)  # transparent: white
    values = GREY.prepare(rgba).tensor[0, 0] * 255
    assert round(float(values[0, 0])) == 76
    assert round(float(values[1, 1])) == 255


def test_a_grey_image_for_an_rgb_model_fills_the_three_channels() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb_preset = ImagePreset(resize_shorter=None, crop=None, mean=(0.5,), std=(0.25,))
    tensor = rgb_preset.prepare(grey).tensor
    assert tensor.shape == (1, 3, 3, 4)
    expected = (torch.from_numpy(grey).float() / 255 - 0.5) / 0.25
    assert all(torch.equal(tensor[0, c], expected) for c in range(3))


def test_sixteen_bit_pngs_keep_their_grey_levels() -> None:
    # levels 8 apart are the same 8-bit level, but reach the model apart, scaled by 65535
    samples = np.array([[1000, 1008, 1016, 60000]], dtype=np.uint16)
    data = png_bytes(Image.fromarray(samples))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    tensor = GREY.prepare(data).tensor[0, 0]
    expected = torch.from_numpy(samples.astype(np.float64) / 65535).float()
    assert torch.equal(tensor, expected)
    assert len(set(tensor[0, :3].tolist())) == 3


def test_an_intensity_window_maps_low_high_onto_zero_one_before_the_normalization() -> None:
    samples = np.array([[0, 1000, 1500, 2000, 4095]], dtype=np.uint16)
    preset = ImagePreset(
        resize_shorter=None,
        crop=None,
        mean=(0.5,),
        std=(0.5,),
        channels=1,
        intensity_window=(1000, 2000),
    )
    tensor = preset.prepare(png_bytes(Image.fromarray(samples))).tensor[0, 0, 0]
    assert tensor.tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]


def test_an_intensity_window_on_a_colour_image_is_refused_in_one_line() -> None:
    preset = ImagePreset(
        resize_shorter=None, crop=None, mean=(0,), std=(1,), intensity_window=(0, 100)
    )
    with pytest.raises(ImageLoadError, match="single-channel") as raised:
        preset.prepare(np.zeros((2, 2, 3), dtype=np.uint8))
    assert "\n" not in str(raised.value)


def test_squash_stretches_as_pil_resize_and_maps_back_through_the_stretch() -> None:
    photo = np.random.default_rng(1).integers(0, 256, (30, 80, 3), dtype=np.uint8)
    preset = ImagePreset(
        resize_shorter=None,
        crop=(16, 24),
        mean=(0.0,),
        std=(1.0,),
        resize_mode="squash",
        interpolation="bilinear",
    )
    prepared = preset.prepare(photo)
    expected = np.asarray(Image.fromarray(photo).resize((24, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(prepared.display, expected)
    geometry = prepared.geometry
    assert geometry.resized_size == (16, 24) and geometry.crop_box == (0, 0, 16, 24)
    # a map that is 1 on the model's left 12 columns lands on the photo's left 40 columns:
    # photo column i has its centre at input index t = (i + 0.5) · 24 / 80 − 0.5, where the
    # bilinear step between input columns 11 and 12 is 12 − t; every pixel was seen (no NaN)
    on_input = np.zeros((16, 24))
    on_input[:, :12] = 1.0
    back = geometry.to_original(on_input)
    t = (np.arange(80) + 0.5) * 24 / 80 - 0.5
    expected = np.broadcast_to(np.clip(12 - t, 0, 1), (30, 80))
    assert back.shape == (30, 80) and not np.isnan(back).any()
    assert np.allclose(back, expected, rtol=0, atol=1e-12)


def test_squash_needs_the_input_size() -> None:
    with pytest.raises(InvalidInputError, match="input size"):
        ImagePreset(resize_shorter=256, crop=None, mean=(0,), std=(1,), resize_mode="squash")


def test_the_channel_count_comes_from_the_first_convolution() -> None:
    grey = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    assert conv_input_channels(grey) == 1
    assert conv_input_channels(torch.jit.script(grey)) == 1
    assert conv_input_channels(torch.jit.trace(grey, torch.zeros(1, 1, 8, 8))) == 1
    assert conv_input_channels(nn.Linear(3, 2)) is None
    assert fallback_preset(None, 1).channels == 1
    assert fallback_preset(None, 1).mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))


def test_preset_keys_and_flags_set_channels_resize_and_interpolation(tmp_path: Path) -> None:
    sidecar = tmp_path / "net.preset.toml"
    sidecar.write_text(
        'channels = 1\nresize = "squash"\nsize = [32, 48]\ninterpolation = "lanczos"\n'
        "intensity_window = [0, 4095]\nmean = [0.2]\nstd = [0.5]\n"
    )
    preset = read_sidecar(sidecar).apply(fallback_preset(None))
    assert (preset.channels, preset.resize_mode, preset.crop) == (1, "squash", (32, 48))
    assert (preset.interpolation, preset.intensity_window) == ("lanczos", (0.0, 4095.0))
    assert (preset.mean, preset.std) == ((0.2,), (0.5,))
    sidecar.write_text("channels = 2\n")
    with pytest.raises(InvalidInputError, match="1 \\(grayscale\\) or 3"):
        read_sidecar(sidecar)


class Grey(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_torchscript_files_are_prepared_with_their_channels(tmp_path: Path) -> None:
    path = tmp_path / "grey.pt"
    torch.jit.save(torch.jit.script(Grey().eval()), path)
    loaded = open_model(str(path))
    assert loaded.preset.channels == 1
    assert loaded.preset.prepare(np.zeros((9, 9, 3), dtype=np.uint8)).tensor.shape[1] == 1
    # --channels overrides what the model says; the model's refusal is one line with the fix
    with pytest.raises(InvalidInputError) as refused:
        open_model(str(path), LoadOptions(channels=3, size=8))
    message = str(refused.value)
    assert "to have 1 channels, but got 3 channels" in message
    assert "--channels 1" in message and "\n" not in message


def small_onnx(path: Path, net: nn.Module, channels: int, size: tuple[int, int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, channels, *size),),
            str(path),
            input_names=["image"],
            dynamic_axes={"image": {0: "batch"}},
            dynamo=False,
        )


class Positional(nn.Module):
    """Three classes from where the image is bright: a linear map of every pixel."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 12 * 20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_an_onnx_classifier_of_squashed_inputs_gives_its_own_probabilities(
    tmp_path: Path,
) -> None:
    import onnxruntime

    model = tmp_path / "squashed.onnx"
    small_onnx(model, Positional(), 3, (12, 20))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    (tmp_path / "squashed.preset.toml").write_text(
        f'resize = "squash"\ninterpolation = "bilinear"\nmean = {list(mean)}\nstd = {list(std)}\n'
    )
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 33, 3), dtype=np.uint8))
    # the model's own predictor: PIL squashes, then (x / 255 - mean) / std, onnxruntime
    squashed = np.asarray(photo.resize((20, 12), Image.Resampling.BILINEAR), dtype=np.float64)
    normalized = (squashed / 255 - np.array(mean)) / np.array(std)
    feed = normalized.transpose(2, 0, 1)[None].astype(np.float32)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = torch.softmax(torch.from_numpy(session.run(None, {"image": feed})[0]), dim=1)

    loaded = open_model(str(model))
    prepared = loaded.preset.prepare(photo)
    # float32 (x / 255 - mean) / std against float64 rounded once: within 2 ulp of ~10
    assert torch.allclose(prepared.tensor, torch.from_numpy(feed), rtol=0, atol=4e-6)
    probabilities = torch.softmax(loaded.adapter.forward(prepared.tensor), dim=1)
    # 720 products summed: a float32 logit moves by ~1e-6, a probability by less
    assert torch.allclose(probabilities, expected, rtol=0, atol=1e-5)
    # the crop the preset made before would not have given them
    cropped = open_model(str(model), LoadOptions(resize="shorter"))
    other = torch.softmax(cropped.adapter.forward(cropped.preset.prepare(photo).tensor), dim=1)
    assert (other - expected).abs().max() > 1e-3


def test_the_cli_takes_channels_resize_and_interpolation(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "grey.onnx"
    small_onnx(model, Grey(), 1, (8, 8))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((10, 30, 3), 128, dtype=np.uint8)).save(photo)
    output = tmp_path / "out"
    flags = ["--resize", "squash", "--interpolation", "nearest", "-o", str(output), "--quiet"]
    command = [
        "explain",
        str(photo),
        "--model",
        str(model),
        "--method",
        "occlusion",
        "--window",
        "4",
    ]
    assert main([*command, *flags]) == 0
    assert (output / "photo_occlusion.png").is_file()
    capsys.readouterr()
    assert main([*command, *flags, "--channels", "3"]) != 0
    error = capsys.readouterr().err.strip()
    assert "--channels 1" in error and "\n" not in error
    assert main([*command, "--interpolation", "cubic"]) != 0
    assert "bicubic" in capsys.readouterr().err


def test_the_server_lists_the_layers_of_a_grayscale_model() -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx2")
    from fastapi.testclient import TestClient

    from salience.adapters.torch import TorchAdapter
    from salience.loading import LoadedModel
    from salience.server import create_app

    preset = ImagePreset(resize_shorter=12, crop=12, mean=(0.5,), std=(0.25,), channels=1)
    model = LoadedModel(TorchAdapter(Grey()), "grey", preset, ["a", "b"])
    with TestClient(create_app([model], workers=1)) as client:
        response = client.get("/api/models/grey/layers")
    assert response.status_code == 200
    assert response.json()["default"] == "conv"
