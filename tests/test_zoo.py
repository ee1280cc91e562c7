"""Tests for the embedded EfficientNet-Lite0 ImageNet model and its class names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from salience.zoo.efficientnet_lite import (
    CROP_SIZE,
    INTERPOLATION,
    PREPROCESS_MEAN,
    PREPROCESS_STD,
    RESIZE_SIZE,
    EfficientNetLite0,
    _weights_path,
    efficientnet_lite0,
)

_ACTIVATIONS = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardtanh, torch.nn.SiLU)
CLASSES_FILE = Path(__file__).resolve().parents[1] / "src/salience/zoo/imagenet_classes.txt"


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return efficientnet_lite0()


def preprocess(img: np.ndarray) -> torch.Tensor:
    """The measured preset: shorter side 224 (bicubic), centre crop 224, TF-Lite scaling."""
    pil = Image.fromarray(img)
    w, h = pil.size
    scale = RESIZE_SIZE / min(w, h)
    interp = Image.Resampling[INTERPOLATION.upper()]
    pil = pil.resize((round(w * scale), round(h * scale)), interp)
    left, top = (pil.width - CROP_SIZE) // 2, (pil.height - CROP_SIZE) // 2
    pil = pil.crop((left, top, left + CROP_SIZE, top + CROP_SIZE))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(PREPROCESS_MEAN).view(3, 1, 1)
    std = torch.tensor(PREPROCESS_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def test_state_dict_loads_strictly() -> None:
    state = torch.load(_weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    assert set(net.state_dict()) == set(state)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_structure(model: EfficientNetLite0) -> None:
    assert not model.training
    assert len(model._blocks) == 16
    names = dict(model.named_modules())
    for layer in ("_blocks.15", "_conv_head", "_bn1", "_fc"):
        assert layer in names
    assert "_blocks.0._expand_conv" not in names
    assert "_blocks.1._expand_conv" in names
    # the blocks' activations are functional; the head's is a module, the default CAM layer
    activations = [name for name, m in model.named_modules() if isinstance(m, _ACTIVATIONS)]
    assert activations == ["_head_activation"]
    assert model._bn0.eps == pytest.approx(1e-3)


def test_batch_output_shape(model: EfficientNetLite0) -> None:
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()


def test_non_224_input(model: EfficientNetLite0) -> None:
    with torch.no_grad():
        out = model(torch.randn(1, 3, 200, 260))
        feats = model.extract_features(torch.randn(1, 3, 200, 260))
    assert out.shape == (1, 1000)
    # TF "same" padding: every stride-2 stage gives ceil(size / 2)
    assert feats.shape == (1, 1280, 7, 9)


def test_same_padding_is_asymmetric_for_stride_2() -> None:
    conv = EfficientNetLite0()._conv_stem
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
        assert torch.equal(conv(x), expected)


def test_gradient_reaches_input(model: EfficientNetLite0) -> None:
    x = torch.randn(1, 3, 224, 224, requires_grad=True)
    model(x)[0, 281].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_class_names() -> None:
    names = CLASSES_FILE.read_text().splitlines()
    assert len(names) == 1000
    assert all(n and n == n.strip() for n in names)
    assert len(set(names)) == 998  # "crane" and "maillot" appear twice in ImageNet-1k
    expected = {
        0: "tench",
        1: "goldfish",
        281: "tabby",
        282: "tiger cat",
        285: "Egyptian cat",
        657: "missile",
        812: "space shuttle",
        967: "espresso",
        968: "cup",
        999: "toilet tissue",
    }
    for index, name in expected.items():
        assert names[index] == name


def test_chelsea_is_a_cat(model: EfficientNetLite0) -> None:
    with torch.no_grad():
        probs = model(preprocess(data.chelsea())).softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285
    assert float(probs[top]) > 0.3
    assert float(probs[281:286].sum()) > 0.8


def test_coffee_is_espresso(model: EfficientNetLite0) -> None:
    with torch.no_grad():
        probs = model(preprocess(data.coffee())).softmax(-1)[0]
    assert int(probs.argmax()) == 967
    assert float(probs[967]) > 0.8
