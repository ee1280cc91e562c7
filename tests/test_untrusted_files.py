"""Opening a model file runs nothing the file carries; small files do not grow into gigabytes.

Each malicious file is built here from a legitimate one. Its payload would create a marker file
when it runs; the tests open the file every way salience offers and check the marker is absent.
"""

from __future__ import annotations

import io
import json
import pathlib
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import Tensor

import salience
from model_factories import DigitsNet
from salience.cli import main
from salience.loading import LoadOptions, model_kind, open_model

HERE = Path(__file__).parent
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
def program(net: DigitsNet, digits: Tensor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A legitimate ``torch.export`` archive of ``net`` with a dynamic batch."""
    path = tmp_path_factory.mktemp("programs") / "net.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(net, (digits,), dynamic_shapes=({0: batch},)), path)
    return path


def touch_then_return(marker: str, value: object) -> object:
    """What an attacker's pickle calls: a side effect, then the value the loader expects."""
    pathlib.Path(marker).touch()
    return value


class Touch:
    """Unpickles by creating ``marker`` (and nothing a loader can use)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class TouchThenReturn:
    """Unpickles by creating ``marker``, then into ``value``: the file opens normally."""

    def __init__(self, marker: Path, value: object) -> None:
        self.marker, self.value = marker, value

    def __reduce__(self) -> tuple:
        return touch_then_return, (str(self.marker), self.value)


def rewritten(
    source: Path,
    target: Path,
    records: dict[str, bytes] | None = None,
    edit: Callable[[str, dict], None] | None = None,
) -> Path:
    """A copy of the archive ``source`` with the records ending in a key of ``records``
    replaced, and each JSON record ending in ``.json`` passed through ``edit(name, doc)``."""
    records = records or {}
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for entry in original.infolist():
            data = original.read(entry)
            for suffix, replacement in records.items():
                if entry.filename.endswith(suffix):
                    data = replacement
            if edit is not None and entry.filename.endswith(".json"):
                document = json.loads(data)
                edit(entry.filename, document)
                data = json.dumps(document).encode()
            copy.writestr(entry.filename, data)
    return target


def pickled(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def photo(folder: Path) -> Path:
    path = folder / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def open_every_way(path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> list[int]:
    """Open ``path`` through the API and the command line; the CLI exit statuses."""
    assert open_model(str(path)).adapter.forward(torch.rand(2, 3, 8, 8)).shape == (2, 10)
    salience.explain(str(path), torch.rand(1, 3, 8, 8), method="gradient")
    statuses = [
        main(["layers", str(path), "--size", "8"]),
        main(
            [
                "explain",
                str(photo(folder)),
                "--model",
                str(path),
                "--size",
                "8",
                "--method",
                "gradient",
                "-o",
                str(folder / "out"),
                "--quiet",
            ]
        ),
    ]
    capsys.readouterr()
    return statuses


def sample_input_payloads(marker: Path, digits: Tensor) -> dict[str, bytes]:
    return {
        "creates a file": pickled(Touch(marker)),
        "creates a file and returns valid inputs": pickled(
            TouchThenReturn(marker, ((digits,), {}))
        ),
    }


@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_an_exported_program_never_unpickles_its_sample_inputs(
    program: Path,
    digits: Tensor,
    suffix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "ran"
    for label, payload in sample_input_payloads(marker, digits).items():
        evil = rewritten(program, tmp_path / f"evil{suffix}", {"sample_inputs/model.pt": payload})
        assert model_kind(str(evil)) == "export"
        layers, explained = open_every_way(evil, tmp_path, capsys)
        assert not marker.exists(), label
        assert layers == 2 and explained == 0, label  # compiled: no layers, but it explains


def test_a_legitimate_program_explains_like_its_module(
    program: Path, net: DigitsNet, digits: Tensor
) -> None:
    expected = salience.explain(net, digits, method="gradient", target=3).attributions
    for model in (open_model(str(program)).adapter, str(program)):
        actual = salience.explain(model, digits, method="gradient", target=3).attributions
        # The program runs the module's own aten operators; if a kernel sums in another order,
        # each dot product of n ≤ 8·3·3·2 = 144 float32 terms moves by ≤ n·ε of its magnitude.
        bound = 144 * torch.finfo(torch.float32).eps * float(expected.abs().max())
        assert float((actual - expected).abs().max()) <= bound


def _set_guard(_name: str, document: dict, marker: Path) -> None:
    if "guards_code" in document:
        document["guards_code"] = [f"__import__('pathlib').Path({str(marker)!r}).touch() is None"]


def _set_shape_expression(_name: str, document: dict, marker: Path) -> None:
    if "graph_module" in document:
        sizes = document["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        text = sizes[0]["as_expr"]["expr_str"]
        sizes[0]["as_expr"]["expr_str"] = (
            f"__import__('pathlib').Path({str(marker)!r}).touch() or {text}"
        )


def _call_python(_name: str, document: dict, marker: Path) -> None:
    if "graph_module" in document:
        node = document["graph_module"]["graph"]["nodes"][1]
        node["target"] = "torch.nn.functional.relu"  # Python, not an operator


def _name_with_code(_name: str, document: dict, marker: Path) -> None:
    if "graph_module" in document:
        text = json.dumps(document).replace('"relu_1"', '"torch.relu_1"')
        document.clear()
        document.update(json.loads(text))


def _import_a_module(_name: str, document: dict, marker: Path) -> None:
    if "graph_module" in document:
        signature = document["graph_module"]["module_call_graph"][0]["signature"]
        context = {  # torch imports default_factory_module to rebuild a defaultdict
            "default_factory_module": "test_untrusted_files",
            "default_factory_name": "Touch",
            "dict_context": [],
        }
        spec = {"type": "collections.defaultdict", "context": context}
        signature["out_spec"] = json.dumps([1, {**spec, "children_spec": []}])


@pytest.mark.parametrize(
    "edit", [_set_guard, _set_shape_expression, _call_python, _name_with_code, _import_a_module]
)
def test_a_program_whose_text_would_run_as_python_is_refused(
    program: Path, digits: Tensor, edit: Callable, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    evil = rewritten(
        program,
        tmp_path / "evil.pt2",
        {"sample_inputs/model.pt": pickled(((digits,), {}))},  # guards need sample inputs
        lambda name, document: edit(name, document, marker),
    )
    try:
        loaded = open_model(str(evil))
        loaded.adapter.forward(digits)
    except ValueError as error:
        message = str(error)
        assert "\n" not in message and "--trust-pickle" in message
    else:
        assert edit is _set_guard  # the guards are dropped: they are not needed to run
    assert not marker.exists()


def test_pickled_weights_are_read_weights_only(
    program: Path, digits: Tensor, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"

    def pickle_first_weight(name: str, document: dict) -> None:
        if name.endswith("model_weights_config.json"):
            next(iter(document["config"].values()))["use_pickle"] = True

    weight = torch.zeros(8, 3, 3, 3)
    evil = rewritten(
        program,
        tmp_path / "evil.pt2",
        {"weights/weight_0": pickled(TouchThenReturn(marker, torch.nn.Parameter(weight)))},
        pickle_first_weight,
    )
    with pytest.raises(ValueError, match="pickled objects that are not plain tensors") as caught:
        open_model(str(evil))
    assert "--trust-pickle" in str(caught.value)
    assert not marker.exists()
    # A parameter pickled in its place is read (weights_only=True reads tensors).
    parameter = pickled(torch.nn.Parameter(weight))
    honest = rewritten(
        program, tmp_path / "honest.pt2", {"weights/weight_0": parameter}, pickle_first_weight
    )
    assert open_model(str(honest)).adapter.forward(digits).shape == (5, 10)
    # Trusting the file means letting it run.
    trusted = open_model(str(evil), LoadOptions(trust_pickle=True))
    assert trusted.adapter.forward(digits).shape == (5, 10)
    assert marker.exists()


def test_a_zero_byte_tensor_record_cannot_claim_a_huge_shape(program: Path, tmp_path: Path) -> None:
    def claim_huge(name: str, document: dict) -> None:
        if name.endswith("model_weights_config.json"):
            meta = next(iter(document["config"].values()))["tensor_meta"]
            meta["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 20}]  # 4 TiB of float32
            meta["strides"] = [{"as_int": 1 << 20}, {"as_int": 1}]

    bomb = rewritten(program, tmp_path / "bomb.pt2", {"weights/weight_0": b""}, claim_huge)
    with pytest.raises(ValueError, match=r"claims a tensor of shape \[1048576, 1048576\]"):
        open_model(str(bomb))


class _Stateful(torch.nn.Module):
    """A scripted module with its own ``__setstate__``, which TorchScript runs on loading."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> list[int]:
        return [1]

    @torch.jit.export
    def __setstate__(self, state: list[int]) -> None:
        self.weight = torch.ones(1)
        self.training = False
        self._is_full_backward_hook = None


def test_torchscript_code_that_reaches_files_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "written"
    honest = tmp_path / "honest.pt"
    torch.jit.save(torch.jit.script(_Stateful()), honest)
    # What an attacker writes into the archive's code: on loading, map a file of their
    # choice into a tensor (torch.from_file with shared=True) and write bytes into it.
    payload = (
        f"    t = torch.from_file({str(marker)!r}, True, 4, dtype=0)\n"
        "    _0 = torch.fill_(t, 65)\n    print(t)\n"
    )

    def inject(code: bytes) -> bytes:
        text = code.decode()
        head, _, tail = text.partition("def __setstate__")
        signature, _, rest = tail.partition("NoneType:\n")
        return (head + "def __setstate__" + signature + "NoneType:\n" + payload + rest).encode()

    with zipfile.ZipFile(honest) as archive:
        sources = {n: archive.read(n) for n in archive.namelist() if n.endswith(".py")}
    (code_file,) = [name for name, code in sources.items() if b"def __setstate__" in code]
    code = sources[code_file]
    evil = rewritten(honest, tmp_path / "evil.pt", {code_file: inject(code)})
    with pytest.raises(ValueError, match="its TorchScript code uses from_file") as caught:
        open_model(str(evil))
    assert "--trust-pickle" in str(caught.value)
    assert not marker.exists()
    assert open_model(str(honest)).adapter.forward(torch.ones(2, 3, 4, 4)).shape == (2, 3, 4, 4)


def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(3 * 8 * 8, dtype=np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "link.bin").symlink_to(secret)
    weight = numpy_helper.from_array(np.zeros((1, 3, 8, 8), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["sum"]), helper.make_node("Flatten", ["sum"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 192])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    for location in ("../secret.bin", str(secret), "link.bin"):
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
        path = folder / "reads_elsewhere.onnx"
        onnx.save_model(model, path)
        with pytest.raises(ValueError, match="outside the model's folder") as caught:
            open_model(str(path))
        assert location in str(caught.value) and "\n" not in str(caught.value)


def test_a_zip_that_claims_to_unpack_to_gigabytes_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"")
        with archive.open("bomb/data/0", "w", force_zip64=True) as entry:
            zeros = bytes(1 << 20)
            for _ in range(64):  # 64 MiB of zeros, a few hundred KB once deflated
                entry.write(zeros)
    assert bomb.stat().st_size < 1 << 20
    for call in (
        lambda: open_model(str(bomb)),
        lambda: open_model(str(bomb), LoadOptions(factory="model_factories:digits_net")),
    ):
        with pytest.raises(ValueError, match=r"claims to unpack to 67\.1 MB from") as caught:
            call()
        assert "\n" not in str(caught.value)


def test_a_weights_file_far_bigger_than_the_model_is_refused_before_reading(
    net: DigitsNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file

    import salience.models.safety

    monkeypatch.setattr(salience.models.safety, "UNPACKED_SLACK", 0)  # keep the file small
    own = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    fits = tmp_path / "checkpoint.safetensors"
    save_file({**state, "optimizer.moments": torch.zeros(own // 4 * 2)}, fits)
    with pytest.raises(ValueError, match=r"unexpected optimizer\.moments"):
        open_model(str(fits), LoadOptions(factory="model_factories:digits_net"))
    padded = tmp_path / "padded.safetensors"
    save_file({**state, "padding": torch.zeros(own // 4 * 4)}, padded)
    with pytest.raises(ValueError, match=r"more than 4× the 6\.2 kB of the factory's model"):
        open_model(str(padded), LoadOptions(factory="model_factories:digits_net"))


def test_hdf5_storage_in_another_file_is_refused(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(64))
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as store:
        store.create_dataset("weights", shape=(16,), dtype="f4", external=[(str(secret), 0, 64)])
    with pytest.raises(ValueError, match="stores /weights in another file") as caught:
        open_model(str(path))
    assert "\n" not in str(caught.value)


def test_a_keras_with_known_safe_mode_bypasses_opens_only_trusted_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from salience.adapters.keras import import_keras

    try:
        keras = import_keras()  # sets the torch backend first
    except ImportError:
        pytest.skip("Keras 3 is not installed (the keras extra)")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs))
    path = tmp_path / "plain.keras"
    keras.Model(inputs, outputs).save(path)
    monkeypatch.setattr(keras, "__version__", "3.11.2")  # .h5 files ignored safe_mode
    with pytest.raises(ValueError, match=r"Keras 3\.11\.2 lets a model file run code") as caught:
        open_model(str(path))
    assert "--trust-pickle" in str(caught.value)
    trusted = open_model(str(path), LoadOptions(trust_pickle=True))
    assert trusted.adapter.forward(torch.rand(1, 3, 8, 8)).shape == (1, 2)
