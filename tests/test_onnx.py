"""ONNX models through onnxruntime: the same outputs and black-box maps as the torch model."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import salience
from salience import viz
from salience.adapters import as_adapter
from salience.adapters.base import (
    BlackBoxAdapter,
    DifferentiableAdapter,
    GradientsUnavailableError,
)
from salience.adapters.onnx import OnnxAdapter, infer_layout
from salience.adapters.structured import OutputKeyError
from salience.adapters.torch import TorchAdapter
from salience.cli import main
from salience.images import IMAGENET_PRESET
from salience.loading import LoadOptions, open_model
from salience.methods.base import Attribution, Explainer, black_box_methods
from salience.models.onnx import onnx_class_names, onnx_preset
from salience.models.presets import parse_class_names
from salience.opening import adapter_for
from salience.targets import TargetSpec

CLASSES = 5
BLACK_BOX = black_box_methods()
SMALL_OPTIONS = {
    "occlusion": {"window": 8, "stride": 4},
    "rise": {"n_masks": 64, "grid": 4, "seed": 3},
}


class TinyCNN(nn.Module):
    """Conv-BN-ReLU-pool-Linear on 3×32×32 images, 5 classes, seeded."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * 8 * 8, CLASSES)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
            self.bn.running_mean.copy_(torch.randn(8, generator=generator) * 0.1)
            self.bn.running_var.copy_(torch.rand(8, generator=generator) + 0.5)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class ChannelsLast(nn.Module):
    """The same network taking NHWC images."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.permute(0, 3, 1, 2))


class WithBias(nn.Module):
    """Two inputs: images and a bias added to the logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, bias: Tensor) -> Tensor:
        return self.net(image) + bias


def export(
    model: nn.Module,
    path: Path,
    *examples: Tensor,
    names: tuple[str, ...] = ("input",),
    dynamic: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export with the TorchScript-based exporter (no onnxscript needed); add metadata."""
    axes = {name: {0: "batch"} for name in (*names, "logits")} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            examples,
            str(path),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=axes,
            dynamo=False,
        )
    if metadata:
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def net() -> TinyCNN:
    return TinyCNN()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def model_path(net: TinyCNN, folder: Path) -> Path:
    return export(net, folder / "tiny.onnx", torch.zeros(1, 3, 32, 32))


@pytest.fixture(scope="module")
def nhwc_path(net: TinyCNN, folder: Path) -> Path:
    return export(ChannelsLast(net), folder / "tiny_nhwc.onnx", torch.zeros(1, 32, 32, 3))


@pytest.fixture(scope="module")
def two_input_path(net: TinyCNN, folder: Path) -> Path:
    examples = (torch.zeros(1, 3, 32, 32), torch.zeros(1, CLASSES))
    return export(WithBias(net), folder / "two.onnx", *examples, names=("image", "bias"))


@pytest.fixture
def batch() -> Tensor:
    return torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def torch_logits(net: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return net(x)


def test_outputs_equal_the_torch_model(net: TinyCNN, model_path: Path, batch: Tensor) -> None:
    adapter = OnnxAdapter(model_path)
    assert isinstance(adapter, BlackBoxAdapter) and not isinstance(adapter, DifferentiableAdapter)
    assert adapter.layout == "nchw" and adapter.input_name == "input"
    assert adapter.device == torch.device("cpu") and adapter.dtype == torch.float32
    assert adapter.layer_names() == [] and adapter.num_outputs == CLASSES
    out = adapter.forward(batch)
    assert out.dtype == torch.float32 and out.shape == (7, CLASSES)
    torch.testing.assert_close(out, torch_logits(net, batch), rtol=1e-5, atol=1e-5)
    assert isinstance(adapter_for(model_path), OnnxAdapter)
    assert isinstance(adapter_for(str(model_path)), OnnxAdapter)
    with pytest.raises(TypeError, match=r"model objects.*salience\.opening\.adapter_for"):
        as_adapter(model_path)  # the adapters layer never opens files


def test_chunks_and_dtypes_do_not_change_outputs(model_path: Path, batch: Tensor) -> None:
    adapter = OnnxAdapter(model_path, threads=1)
    whole = adapter.forward(batch)
    for chunk_size in (1, 3, 7, 100):
        torch.testing.assert_close(adapter.forward(batch, chunk_size=chunk_size), whole)
    torch.testing.assert_close(adapter.forward(batch.double()), whole)
    assert adapter.prepare_input(batch.double()).dtype == torch.float32


def test_a_fixed_batch_size_runs_in_padded_chunks(
    net: TinyCNN, folder: Path, batch: Tensor
) -> None:
    path = export(net, folder / "fixed.onnx", torch.zeros(2, 3, 32, 32), dynamic=False)
    adapter = OnnxAdapter(path)
    assert adapter.fixed_batch == 2 and adapter.num_outputs == CLASSES
    expected = torch_logits(net, batch)
    for chunk_size in (None, 1, 4):
        out = adapter.forward(batch, chunk_size=chunk_size)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_nhwc_models_take_nchw_batches(
    net: TinyCNN, model_path: Path, nhwc_path: Path, batch: Tensor
) -> None:
    adapter = OnnxAdapter(nhwc_path)
    assert adapter.layout == "nhwc" and adapter.layout_inferred
    assert adapter.expected_shape() == [None, 3, 32, 32]
    assert adapter.image_size() == (32, 32)
    torch.testing.assert_close(adapter.forward(batch), OnnxAdapter(model_path).forward(batch))
    torch.testing.assert_close(
        adapter.forward(batch), torch_logits(net, batch), rtol=1e-5, atol=1e-5
    )


def test_layouts_from_static_shapes() -> None:
    assert infer_layout(["N", 3, 224, 224]) == ("nchw", True)
    assert infer_layout([1, 224, 224, 3]) == ("nhwc", True)
    assert infer_layout(["N", 1, 28, 28]) == ("nchw", True)
    assert infer_layout(["N", "C", "H", "W"]) == ("nchw", False)
    assert infer_layout([1, 3, 3, 3]) == ("nchw", False)


def test_a_wrong_image_shape_says_what_was_expected(model_path: Path, nhwc_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 3, 32, 32\)") as info:
        OnnxAdapter(model_path).forward(torch.zeros(1, 3, 224, 224))
    message = str(info.value)
    assert "\n" not in message
    assert "got (1, 3, 224, 224)" in message and "--size 32" in message
    assert "--layout nhwc" in message
    # an NHWC model read as NCHW: the layout is the way out
    wrong = OnnxAdapter(nhwc_path, layout="nchw")
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\), got \(2, 3, 32, 32\)") as info:
        wrong.forward(torch.zeros(2, 3, 32, 32))
    assert "--layout nhwc" in str(info.value)
    with pytest.raises(ValueError, match="layout must be one of nchw, nhwc"):
        OnnxAdapter(model_path, layout="chw")
    with pytest.raises(ValueError, match="N >= 1"):
        OnnxAdapter(model_path).forward(torch.zeros(0, 3, 32, 32))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        OnnxAdapter(model_path).forward(np.zeros((1, 3, 32, 32), np.float32))  # type: ignore[arg-type]


def test_several_inputs_need_an_input_name(
    net: TinyCNN, two_input_path: Path, batch: Tensor
) -> None:
    with pytest.raises(ValueError, match=r"has 2 inputs \(image, bias\); choose") as info:
        OnnxAdapter(two_input_path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no input 'pixels'; its inputs: image, bias"):
        OnnxAdapter(two_input_path, input_name="pixels")
    with pytest.raises(ValueError, match=r"also needs inputs bias \(N, 5\)"):
        OnnxAdapter(two_input_path, input_name="image")
    with pytest.raises(ValueError, match="not another input"):
        OnnxAdapter(two_input_path, input_name="image", other_inputs={"image": torch.zeros(1)})
    bias = torch.arange(CLASSES, dtype=torch.float32)[None]
    adapter = OnnxAdapter(two_input_path, input_name="image", other_inputs={"bias": bias})
    expected = torch_logits(net, batch) + bias
    torch.testing.assert_close(adapter.forward(batch, chunk_size=3), expected, rtol=1e-5, atol=1e-5)


def test_files_that_are_not_models(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"these are not the weights you are looking for")
    with pytest.raises(ValueError, match=r"^model\.onnx is not a valid ONNX model: ") as info:
        OnnxAdapter(bad)
    assert "\n" not in str(info.value) and "ONNXRuntimeError" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        OnnxAdapter(tmp_path / "missing.onnx")


def test_without_onnxruntime_the_error_says_what_to_install(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'salience\[onnx\]'"):
        OnnxAdapter(model_path)


def test_a_final_softmax_is_cut_off(net: TinyCNN, folder: Path, batch: Tensor) -> None:
    path = export(nn.Sequential(net, nn.Softmax(dim=1)), folder / "softmax.onnx", batch[:1])
    logits = torch_logits(net, batch)
    adapter = OnnxAdapter(path)
    assert adapter.stripped_softmax
    torch.testing.assert_close(adapter.forward(batch), logits, rtol=1e-5, atol=1e-5)
    kept = OnnxAdapter(path, strip_softmax=False)
    assert not kept.stripped_softmax
    torch.testing.assert_close(kept.forward(batch), logits.softmax(1), rtol=1e-5, atol=1e-6)


def test_gradient_methods_are_refused(model_path: Path, batch: Tensor) -> None:
    assert BLACK_BOX, "no black-box method is registered"
    listed = ", ".join(BLACK_BOX)
    with pytest.raises(GradientsUnavailableError, match=f"black-box models: {listed}$"):
        salience.explain(model_path, batch[:1], method="gradient")
    with pytest.raises(GradientsUnavailableError, match=f"black-box models: {listed}$"):
        salience.explain(str(model_path), batch[:1], method="gradcam")
    assert not hasattr(OnnxAdapter(model_path), "run")  # no gradient pass to ask for


class PatchDrop(Explainer):
    """A black-box method in miniature: the score drop when each 8×8 patch is zeroed."""

    needs_gradients = False

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        selection, scores = self.fixed_selection(x, spec, score)
        patched = []
        for row in range(0, x.shape[-2], 8):
            for col in range(0, x.shape[-1], 8):
                copy = x.clone()
                copy[..., row : row + 8, col : col + 8] = 0
                patched.append(copy)
        outputs = self.adapter.forward(torch.cat(patched), chunk_size=5)
        index = selection.indices.repeat(len(patched), 1)
        drops = scores.repeat(len(patched), 1) - outputs.gather(1, index)
        grid = drops.reshape(len(patched), x.shape[0], -1).permute(1, 2, 0)
        maps = grid.reshape(x.shape[0], -1, x.shape[-2] // 8, x.shape[-1] // 8)
        return Attribution(maps, selection, scores)


def test_a_black_box_method_sees_the_same_model(
    net: TinyCNN, model_path: Path, nhwc_path: Path, batch: Tensor
) -> None:
    expected = PatchDrop(net)(batch[:3], "top-2")
    for path in (model_path, nhwc_path):
        got = PatchDrop(path)(batch[:3], "top-2")
        assert torch.equal(got.targets, expected.targets)
        torch.testing.assert_close(got.attributions, expected.attributions, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", BLACK_BOX)
def test_black_box_maps_equal_the_torch_model(
    method: str, net: TinyCNN, model_path: Path, batch: Tensor
) -> None:
    options = SMALL_OPTIONS.get(method, {})
    x = batch[:2]
    expected = salience.explain(TorchAdapter(net), x, method=method, target="top-2", **options)
    got = salience.explain(model_path, x, method=method, target="top-2", **options)
    assert torch.equal(got.targets, expected.targets)
    scale = float(expected.attributions.abs().max())
    torch.testing.assert_close(
        got.attributions, expected.attributions, rtol=1e-4, atol=1e-4 * scale
    )


def test_metadata_gives_the_preprocessing_and_class_names(net: TinyCNN, folder: Path) -> None:
    metadata = {
        "mean": "0.5, 0.4, 0.3",
        "std": "0.2,0.25,0.3",
        "size": "32",
        "resize": "36",
        "class_names": "cat\ndog\nbird, small\nfish\nfrog\n",
    }
    path = export(net, folder / "meta.onnx", torch.zeros(1, 3, 32, 32), metadata=metadata)
    adapter = OnnxAdapter(path)
    assert adapter.metadata == metadata
    preset = onnx_preset(adapter)
    assert preset.mean == (0.5, 0.4, 0.3) and preset.std == (0.2, 0.25, 0.3)
    assert preset.crop == (32, 32) and preset.resize_shorter == 36
    assert onnx_class_names(adapter) == ("cat", "dog", "bird, small", "fish", "frog")
    override = onnx_preset(adapter, size=40, mean=(0.1, 0.2, 0.3))
    assert override.crop == (40, 40) and override.resize_shorter == 40
    assert override.mean == (0.1, 0.2, 0.3) and override.std == (0.2, 0.25, 0.3)


def test_preprocessing_without_metadata(model_path: Path, nhwc_path: Path) -> None:
    for path in (model_path, nhwc_path):
        adapter = OnnxAdapter(path)
        preset = onnx_preset(adapter)
        assert preset.crop == (32, 32) and preset.resize_shorter == 32
        assert (preset.mean, preset.std) == (IMAGENET_PRESET.mean, IMAGENET_PRESET.std)
        assert onnx_class_names(adapter) is None
        image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
        prepared = preset.prepare(image)
        assert prepared.tensor.shape == (1, 3, 32, 32)
        assert adapter.forward(prepared.tensor).shape == (1, CLASSES)


def test_class_name_formats_and_bad_metadata(net: TinyCNN, folder: Path) -> None:
    assert parse_class_names("a,b , c") == ("a", "b", "c")
    assert parse_class_names('["x, y", "z"]') == ("x, y", "z")
    assert parse_class_names(json.dumps({"1": "dog", "0": "cat", "10": "eel"})) == (
        "cat",
        "dog",
        "eel",
    )
    metadata = {"labels": "a,b,c,d,e", "mean": "0.5,0.5", "crop": "28"}
    path = export(net, folder / "labels.onnx", torch.zeros(1, 3, 32, 32), metadata=metadata)
    adapter = OnnxAdapter(path)
    assert onnx_class_names(adapter) == ("a", "b", "c", "d", "e")
    with pytest.raises(ValueError, match="metadata 'mean' must be 3 comma-separated numbers"):
        onnx_preset(adapter)
    assert onnx_preset(adapter, mean=(0.5, 0.5, 0.5)).crop == (28, 28)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("method", BLACK_BOX)
def test_cli_explains_an_onnx_model(
    method: str, model_path: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\nfish\nfrog\n")
    out = tmp_path / "out"
    status, stdout, err = _cli(
        capsys,
        "explain",
        str(photo),
        "--model",
        str(model_path),
        "--method",
        method,
        "--size",
        "32",
        "--classes",
        str(classes),
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
        "--target",
        "top-2",
        "-o",
        str(out),
        "--quiet",
    )
    assert status == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "photo: top-5 predictions of tiny.onnx"
    assert len(lines) >= 6 and all(n in stdout for n in ("cat", "dog", "bird", "fish", "frog"))
    written = sorted(p.name for p in out.iterdir())
    meta = json.loads((out / f"photo_{method}.json").read_text())
    figures = [f"photo_{method}_top{k + 1}_{meta['target_names'][0][k]}.png" for k in (0, 1)]
    assert meta["figures"] == figures and {*figures, "grid.png"} <= set(written)
    assert meta["model"] == "tiny.onnx" and meta["method"] == method
    assert meta["shape"][:2] == [1, 2] and meta["shape"][-2:] == [32, 32]
    figure = np.asarray(Image.open(out / figures[0]))
    # the photo's geometry under a title and beside a colorbar
    assert figure.shape[1] == 48 + viz.COLORBAR_PIXELS and figure.shape[0] >= 40


def test_cli_with_metadata_and_default_class_names(
    net: TinyCNN,
    model_path: Path,
    folder: Path,
    photo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    method = BLACK_BOX[0]
    metadata = {"size": "32", "class_names": "ant\nbee\ncow\ndoe\neel"}
    named = export(net, folder / "named.onnx", torch.zeros(1, 3, 32, 32), metadata=metadata)
    status, stdout, err = _cli(
        capsys,
        "explain",
        str(photo),
        "--model",
        str(named),
        "--method",
        method,
        "-o",
        str(tmp_path / "a"),
        "--quiet",
    )
    assert status == 0, err
    assert sum(name in stdout for name in ("ant", "bee", "cow", "doe", "eel")) == CLASSES
    # no class names, and a class count the model only tells by running
    monkeypatch.setattr(OnnxAdapter, "num_outputs", property(lambda _self: None))
    status, stdout, err = _cli(
        capsys,
        "explain",
        str(photo),
        "--model",
        str(model_path),
        "--method",
        method,
        "-o",
        str(tmp_path / "b"),
        "--quiet",
    )
    assert status == 0, err
    assert "class 4" in stdout and "(class 4)" in stdout


def test_cli_one_line_errors(
    model_path: Path,
    nhwc_path: Path,
    photo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = str(tmp_path / "out")
    status, _, err = _cli(
        capsys,
        "explain",
        str(photo),
        "--model",
        str(model_path),
        "--method",
        "gradient",
        "-o",
        out,
        "--quiet",
    )
    assert status == 2
    assert err.startswith("salience: error: gradient needs gradients") and err.count("\n") == 1
    assert f"black-box models: {', '.join(BLACK_BOX)}" in err
    status, _, err = _cli(
        capsys,
        "explain",
        str(photo),
        "--model",
        str(model_path),
        "--method",
        BLACK_BOX[0],
        "--size",
        "40",
        "-o",
        out,
        "--quiet",
    )
    assert status == 2 and err.count("\n") == 1
    assert "expects inputs of shape (N, 3, 32, 32), got (1, 3, 40, 40)" in err
    status, _, err = _cli(
        capsys,
        "explain",
        str(photo),
        "--model",
        str(nhwc_path),
        "--layout",
        "nchw",
        "--method",
        BLACK_BOX[0],
        "-o",
        out,
        "--quiet",
    )
    assert status == 2 and "--layout nhwc" in err
    classes = tmp_path / "three.txt"
    classes.write_text("a\nb\nc\n")
    for extra, message in [
        (["--classes", str(classes)], "names 3 classes but tiny.onnx has 5 outputs"),
        (["--mean", "0.5,0.5"], "--mean takes 3 comma-separated numbers"),
        (["--input-name", "pixels"], "no input 'pixels'; its inputs: input"),
    ]:
        status, _, err = _cli(
            capsys,
            "explain",
            str(photo),
            "--model",
            str(model_path),
            "--method",
            BLACK_BOX[0],
            *extra,
            "-o",
            out,
            "--quiet",
        )
        assert status == 2 and message in err and err.count("\n") == 1, err
    status, _, err = _cli(capsys, "explain", "--model", str(tmp_path / "none.onnx"), "-o", out)
    assert status == 2 and "no ONNX model at" in err
    status, _, err = _cli(capsys, "explain", "--layout", "nhwc", "--size", "32", "-o", out)
    assert status == 2 and "--layout, --size apply to model files and factories" in err


class TwoOutputs(nn.Module):
    """Features ``(N, 8)`` first, then the class probabilities (a final softmax)."""

    def __init__(self, net: TinyCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.net.pool(torch.relu(self.net.bn(self.net.conv(x)))).mean((2, 3))
        return features, torch.softmax(self.net(x), dim=1)


@pytest.fixture(scope="module")
def two_output_path(net: TinyCNN, folder: Path) -> Path:
    path = folder / "two_outputs.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            TwoOutputs(net).eval(),
            (torch.zeros(1, 3, 32, 32),),
            str(path),
            input_names=["input"],
            output_names=["features", "probs"],
            dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}, "probs": {0: "batch"}},
            dynamo=False,
        )
    return path


@pytest.mark.parametrize("key", ["probs", 1, "1"])
def test_an_output_is_chosen_by_name_or_index_and_its_softmax_cut(
    net: TinyCNN, two_output_path: Path, batch: Tensor, key: object
) -> None:
    first = OnnxAdapter(two_output_path)
    assert first.output_index == 0 and first.stripped_activation is None
    features = net.pool(torch.relu(net.bn(net.conv(batch)))).mean((2, 3)).detach()
    torch.testing.assert_close(first.forward(batch), features, rtol=1e-5, atol=1e-5)
    chosen = first.with_output(key)
    assert chosen.output_index == 1 and chosen.stripped_activation == "softmax"
    assert chosen.num_outputs == CLASSES and first.num_outputs == 8
    torch.testing.assert_close(
        chosen.forward(batch), torch_logits(net, batch), rtol=1e-5, atol=1e-5
    )
    kept = OnnxAdapter(two_output_path, output="probs", strip_softmax=False)
    torch.testing.assert_close(
        kept.forward(batch), torch_logits(net, batch).softmax(1), rtol=1e-5, atol=1e-6
    )


def test_an_unknown_output_is_refused_with_the_graphs_outputs(two_output_path: Path) -> None:
    with pytest.raises(OutputKeyError) as caught:
        OnnxAdapter(two_output_path, output="logits")
    message = str(caught.value)
    assert "no output 'logits'" in message and "0: features" in message
    assert "1: probs" in message and "--output-key" in message
    with pytest.raises(OutputKeyError, match="no output 2"):
        OnnxAdapter(two_output_path, output=2)


def test_the_cli_explains_the_chosen_onnx_output(
    net: TinyCNN, two_output_path: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    common = ["explain", str(photo), "--model", str(two_output_path), "--size", "32"]
    common += ["--method", "occlusion", "-o", str(out), "--quiet"]
    status, _, err = _cli(capsys, *common, "--output-key", "probs")
    assert status == 0, err
    meta = json.loads((out / "photo_occlusion.json").read_text())
    loaded = open_model(str(two_output_path), LoadOptions(size=32, output_key="probs"))
    logits = loaded.adapter.forward(loaded.preset.prepare(photo).tensor)[0]
    assert meta["targets"][0][0] == int(logits.argmax())  # the class of the chosen output
    assert meta["scores"][0][0] == pytest.approx(float(logits.max()), rel=1e-5)  # its logit
    assert meta["score_kind"] == "logit"
    status, _, err = _cli(capsys, *common, "--output-key", "scores")
    assert status != 0 and "0: features" in err and "1: probs" in err
