"""Choosing the layer a CAM looks at: by name, by module, automatically; and listing layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import salience
from conftest import SmallCNN
from salience import viz
from salience.adapters.layers import LayerError
from salience.adapters.torch import ModelOutputError, TorchAdapter
from salience.cli import main, method_names
from salience.methods.cam import CAMExplainer
from salience.registry import available, get


def vgg_like() -> nn.Sequential:
    features = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    return nn.Sequential(
        nn.Sequential(), features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)
    )


def test_the_automatic_layer_is_the_last_feature_map_before_global_pooling(
    small_cnn: SmallCNN, images: Tensor
) -> None:
    # SmallCNN ends conv2 -> bn2 -> functional relu6 -> mean: bn2 is the last module with a map
    assert TorchAdapter(small_cnn).resolve_layer(None, images) == "bn2"
    model = vgg_like()
    # the container `1` finishes after its last child (the max-pool, 6×2×2): same output
    assert TorchAdapter(model).resolve_layer("auto", torch.zeros(1, 3, 8, 8)) == "1"
    explanation = salience.explain(model, torch.randn(1, 3, 8, 8), method="gradcam")
    assert explanation.info == {"layer": "1", "feature_shape": [6, 2, 2]}
    assert explanation.params["layer"] == "auto"


def test_a_layer_given_as_a_module_is_the_layer_of_that_name(
    small_cnn: SmallCNN, images: Tensor
) -> None:
    by_module = salience.explain(small_cnn, images, method="gradcam", layer=small_cnn.conv2)
    by_name = salience.explain(small_cnn, images, method="gradcam", layer="conv2")
    assert torch.equal(by_module.attributions, by_name.attributions)
    assert by_module.params["layer"] == "conv2"


def test_unknown_and_foreign_layers_are_named_in_the_error(small_cnn: SmallCNN) -> None:
    with pytest.raises(LayerError, match=r"no layer 'conv3'.*did you mean 'conv2', 'conv1'"):
        salience.make_explainer(small_cnn, "gradcam", layer="conv3")
    with pytest.raises(LayerError, match="not part of this model"):
        salience.make_explainer(small_cnn, "scorecam", layer=nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="module name"):
        salience.make_explainer(small_cnn, "gradcam", layer=3)


def test_models_without_a_feature_map_ask_for_a_layer() -> None:
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(LayerError, match="no layer with a spatial output"):
        salience.explain(mlp, torch.randn(2, 4), method="gradcam")
    with pytest.raises(ValueError, match="no spatial dimensions"):
        salience.explain(mlp, torch.randn(2, 4), method="gradcam", layer="1")


class TupleLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.conv(x), x


class ReturnsTuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = TupleLayer()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.block(x)[0].mean(dim=(2, 3)))


def test_a_layer_that_returns_a_tuple_is_refused_clearly() -> None:
    with pytest.raises(ModelOutputError, match="returned a tuple, not one tensor"):
        salience.explain(ReturnsTuple(), torch.randn(1, 3, 6, 6), method="gradcam", layer="block")
    assert TorchAdapter(ReturnsTuple()).resolve_layer(None, torch.randn(1, 3, 6, 6)) == "block.conv"


class SharedActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.conv2(self.act(self.conv1(x)))).mean(dim=(2, 3)))


def test_layer_table_lists_shapes_in_call_order_and_counts_calls() -> None:
    table = TorchAdapter(SharedActivation()).layer_table(torch.zeros(1, 3, 8, 8))
    assert [(i.name, i.kind, i.shape, i.calls) for i in table] == [
        ("conv1", "Conv2d", (1, 4, 8, 8), 1),
        ("act", "ReLU", (1, 5, 4, 4), 2),  # the shape of its last call, which a CAM sees
        ("conv2", "Conv2d", (1, 5, 4, 4), 1),
        ("fc", "Linear", (1, 2), 1),
    ]


def test_salience_layers_lists_the_bundled_models_feature_maps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("layers of efficientnet_lite0 on a 1×3×224×224 input")
    rows = {line[2:].split()[0]: line for line in out.splitlines()[1:]}
    assert "320×7×7" in rows["_blocks.15"] and "MBConvBlock" in rows["_blocks.15"]
    assert rows["_head_activation"].startswith("* ") and "1280×7×7" in rows["_head_activation"]
    assert "_fc" not in rows  # not a feature map: shown with --all only
    assert main(["layers", "--all"]) == 0
    assert "1000" in capsys.readouterr().out


def test_cams_on_the_command_line_expand_to_every_cam_in_the_papers_order() -> None:
    cams = method_names("cams")
    assert set(cams) == {
        m for m in available("method") if issubclass(get("method", m), CAMExplainer)
    }
    assert cams[:5] == ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]
    assert method_names("gradient, cams,gradcam") == ["gradient", *cams]


def test_the_cli_writes_cams_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    methods = ["gradcam", "gradcam++", "eigencam", "ablationcam", "guided_gradcam"]
    status = main(
        [
            "explain",
            "--method",
            ",".join(methods),
            "--layer",
            "_blocks.15",
            "-o",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert status == 0, capsys.readouterr().err
    for method in methods:
        meta = json.loads((tmp_path / f"chelsea_{method}.json").read_text())
        assert meta["params"]["layer"] == "_blocks.15"
        expected = [1, 1, 3, 224, 224] if method == "guided_gradcam" else [1, 1, 7, 7]
        assert meta["shape"] == expected
        figure = np.asarray(Image.open(tmp_path / f"chelsea_{method}.png"))
        # the original photo's geometry under a title and beside a colorbar
        assert figure.shape[1] == 451 + viz.COLORBAR_PIXELS and figure.shape[0] >= 300
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape[1] > grid.shape[0]  # the photo and five maps, at most four to a row
    status = main(["explain", "--method", "gradcam", "--layer", "_block.15", "-o", str(tmp_path)])
    assert status == 2
    assert "did you mean '_blocks.15'" in capsys.readouterr().err
