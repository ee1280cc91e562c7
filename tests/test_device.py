"""``--device``: a GPU this machine lacks is refused in one line before the model opens, the CPU
works and gives the maps of the default, and on a machine with CUDA the maps agree with the CPU's
and come back on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from salience.adapters.torch import check_device
from salience.errors import InvalidInputError
from salience.models import open_model
from salience.models.options import LoadOptions
from test_cli_errors import FACTORY, SMALL, no_model, one_line_error, photos, run

__all__ = ["no_model"]  # the fixture, used by name

ABSENT = {
    "cuda": ("torch.cuda.is_available() is False", "cuda"),
    "mps": ("torch.backends.mps.is_available() is False", "mps"),
}


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without CUDA or MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device", list(ABSENT))
@pytest.mark.parametrize("command", ["explain", "compare", "batch"])
def test_a_gpu_this_machine_lacks_is_refused_before_the_model_opens(
    device: str,
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_gpu: None,
    no_model: None,
) -> None:
    images = photos(tmp_path / "in", dark=20)
    where = [str(tmp_path / "in")] if command == "batch" else images
    out = tmp_path / "out"
    argv = [command, *where, "--model", FACTORY, "--device", device, "-o", str(out), *SMALL]
    status, _, err = run(capsys, *argv)
    assert status == 2
    line = one_line_error(err)
    assert ABSENT[device][0] in line and "use --device cpu" in line
    assert not out.exists()


@pytest.mark.parametrize("name", ["gpu", "cpu:0", "cuda:x"])
def test_an_unknown_device_names_the_choices(name: str) -> None:
    with pytest.raises(InvalidInputError, match=f"unknown device '{name}'; choose cpu, cuda, mps"):
        check_device(name)


def test_a_cuda_index_past_the_devices_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InvalidInputError, match=r"2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        check_device("cuda:2")


def test_device_cpu_gives_the_maps_and_files_of_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = photos(tmp_path / "in", dark=20, bright=200)
    found = {}
    for name, flags in {"default": [], "cpu": ["--device", "cpu"]}.items():
        out = tmp_path / name
        argv = ["explain", *images, "--model", FACTORY, "--method", "gradient,gradcam"]
        status, _, err = run(capsys, *argv, *flags, "-o", str(out), *SMALL)
        assert status == 0, err
        found[name] = {p.name: np.load(p) for p in sorted(out.glob("*.npz"))}
    assert len(found["cpu"]) == 2 * 2 and found["cpu"].keys() == found["default"].keys()
    for file, arrays in found["cpu"].items():
        for key in arrays.files:
            np.testing.assert_array_equal(arrays[key], found["default"][file][key])


def test_batch_device_cpu_runs_and_records_the_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos(tmp_path / "in", dark=20, bright=200)
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "in"), "--model", FACTORY, "--method", "gradient"]
    status, _, err = run(capsys, *argv, "--device", "cpu", "-o", str(out), "--workers", "1", *SMALL)
    assert status == 0, err
    assert json.loads((out / "job.json").read_text())["load_options"]["device"] == "cpu"
    assert len(list(out.glob("items/*/gradient.npz"))) == 2


def test_a_model_that_is_no_pytorch_module_runs_on_the_cpu_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import salience.adapters.torch
    from salience.adapters.keras import KerasAdapter
    from salience.models.loader import on_device

    class Box:
        device = torch.device("cpu")

    box = Box()
    assert on_device(box, "cpu", "onnx") is box
    assert on_device(box, None, "onnx") is box
    # a device that is there (meta stands in for a GPU): a black box is refused, in one line
    monkeypatch.setattr(salience.adapters.torch, "check_device", lambda _: torch.device("meta"))
    with pytest.raises(InvalidInputError, match="this onnx model runs where it is opened: use"):
        on_device(box, "cuda", "onnx")
    keras = KerasAdapter.__new__(KerasAdapter)  # a subclass of TorchAdapter, never moved
    with pytest.raises(InvalidInputError, match="moves PyTorch modules"):
        on_device(keras, "cuda", "keras")


def test_a_pytorch_module_opened_by_salience_is_moved_once_where_it_is_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import salience.adapters.torch
    from salience.models.loader import on_device

    adapter = open_model(FACTORY, LoadOptions(size=32)).adapter
    assert adapter.device == torch.device("cpu")
    monkeypatch.setattr(salience.adapters.torch, "check_device", lambda _: torch.device("meta"))
    assert on_device(adapter, "cuda", "factory") is adapter
    assert adapter.device.type == "meta"
    assert {p.device.type for p in adapter.model.parameters()} == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_maps_agree_with_the_cpus_and_come_back_on_the_cpu() -> None:
    import salience

    cpu = open_model(FACTORY)
    gpu = open_model(FACTORY, LoadOptions(device="cuda"))
    assert gpu.adapter.device.type == "cuda" and cpu.adapter.device.type == "cpu"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for method in ("gradient", "gradcam", "occlusion", "integrated_gradients"):
        ours = salience.explain(gpu.adapter, x, method=method, target=3)
        theirs = salience.explain(cpu.adapter, x, method=method, target=3)
        assert ours.attributions.device.type == "cpu"
        scale = float(theirs.attributions.abs().max())
        # float32 kernels of another device: a few hundred roundings of the largest value
        bound = 512 * torch.finfo(torch.float32).eps * scale
        torch.testing.assert_close(ours.attributions, theirs.attributions, rtol=0, atol=bound)
