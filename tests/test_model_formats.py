"""The registry of model formats: each format is one module that registers itself, and a format
registered from outside (here, in the test) is recognised and opened like the built-in ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import salience.registry
from model_factories import DigitsNet
from salience.adapters.torch import TorchAdapter
from salience.models import FORMAT, LoadOptions, ModelFormat, formats, model_kind, open_model
from salience.models.formats import Opened, register_format
from salience.models.presets import fallback_preset

MAGIC = b"TOYNET\x00\x01"
"""The first bytes of the toy format's files."""


def open_toy(path: str, options: LoadOptions, settings: object, *, fuse: bool = True) -> Opened:
    """The toy format holds a seed: the model is a DigitsNet initialized with it."""
    seed = int(Path(path).read_bytes()[len(MAGIC) :].decode())
    torch.manual_seed(seed)
    return Opened(TorchAdapter(DigitsNet().eval()), Path(path).name, fallback_preset((8, 8)))


@pytest.fixture
def toy_format(monkeypatch: pytest.MonkeyPatch) -> ModelFormat:
    """The toy format, registered for the test only."""
    entries = {f.kind: f for f in formats()}  # the built-in ones, restored afterwards
    monkeypatch.setitem(salience.registry._REGISTRIES, FORMAT, entries)
    toy = ModelFormat(
        kind="toy",
        open=open_toy,
        suffixes=(".toy",),
        recognises=lambda head: head.head == MAGIC,
        file_suffixes=(".toy",),
    )
    return register_format(toy)


def test_the_built_in_formats_register_themselves_one_module_each() -> None:
    modules = {f.kind: f.open.__module__ for f in formats()}
    assert modules == {
        "bundled": "salience.models.bundled",
        "factory": "salience.models.factory",
        "keras": "salience.models.keras",
        "export": "salience.models.export",
        "torchscript": "salience.models.torchscript",
        "torch file": "salience.models.state_dict",
        "onnx": "salience.models.onnx",
        "tensorflow": "salience.models.tensorflow",
    }


def test_a_registered_format_is_recognised_by_suffix_and_by_content(
    toy_format: ModelFormat, tmp_path: Path
) -> None:
    by_suffix = tmp_path / "net.toy"
    by_suffix.write_bytes(MAGIC + b"3")
    by_content = tmp_path / "net.bin"  # a PyTorch suffix: the content decides first
    by_content.write_bytes(MAGIC + b"3")
    assert model_kind(str(by_suffix)) == model_kind(str(by_content)) == "toy"
    assert model_kind(str(tmp_path / "missing.toy")) == "toy"  # its suffix, before it exists
    with pytest.raises(FileNotFoundError, match=r"a file \(\.pt2, .*\.toy, .*\.onnx\)"):
        model_kind(str(tmp_path / "missing.weird"))
    loaded = open_model(str(by_content))
    assert loaded.name == "net.bin" and loaded.class_names == [f"class {i}" for i in range(10)]
    assert loaded.preset.crop == (8, 8)
    torch.manual_seed(3)
    expected = DigitsNet().state_dict()
    opened = loaded.adapter.model.state_dict()
    assert all(torch.equal(opened[key], value) for key, value in expected.items())


def test_a_new_format_gets_the_shared_checks(toy_format: ModelFormat, tmp_path: Path) -> None:
    """Options that only other formats take are refused, a sidecar beside the file is read."""
    path = tmp_path / "net.toy"
    path.write_bytes(MAGIC + b"1")
    with pytest.raises(ValueError, match=r"weights go with a factory .* not with the toy"):
        open_model(str(path), LoadOptions(weights="w.pth"))
    with pytest.raises(ValueError, match=r"--input-name\) is for ONNX models, not the toy"):
        open_model(str(path), LoadOptions(input_name="x"))
    (tmp_path / "net.preset.toml").write_text('labels = ["zero", "one"]\n')
    with pytest.raises(ValueError, match=r"labels names 2 classes but net\.toy has 10"):
        open_model(str(path))


def test_without_the_format_the_file_is_not_recognised(tmp_path: Path) -> None:
    path = tmp_path / "net.bin"
    path.write_bytes(MAGIC + b"3")
    assert model_kind(str(path)) == "torch file"
