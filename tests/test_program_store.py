"""The program store: a later process reads the captured program instead of capturing again;
an entry is parsed only when its tag proves it this user's own, is named by everything the
program depends on, and is checked against the eager copy like a fresh capture."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import SmallCNN, relative_error
from salience.adapters import fused, program_store
from salience.adapters.fused import CAPTURED
from salience.adapters.torch import CAPTURED_BATCH, TorchAdapter
from salience.methods import masking

CAPTURE_BOUND = 1e-4  # what every capture is verified to (see test_capture.py)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store of this test's own."""
    folder = tmp_path / "store"
    monkeypatch.setenv(program_store.ENVIRONMENT, str(folder))
    return folder


def seeded_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


def batch() -> Tensor:
    """One batch of the size a captured program runs."""
    return torch.randn(CAPTURED_BATCH, 3, 12, 12, generator=torch.Generator().manual_seed(7))


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.program"))


def export_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, torch.export fails: only a stored program can be captured."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("export ran: the stored program was not used")

    monkeypatch.setattr(torch.export, "export", refuse)


def test_a_new_process_reads_the_program_instead_of_capturing(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = batch()
    first = TorchAdapter(seeded_cnn())._capture(x)
    assert first is not None and first.program is not None
    assert len(entries(store)) == 1
    assert (store / "key").stat().st_mode & 0o777 == 0o600
    assert store.stat().st_mode & 0o777 == 0o700
    export_refused(monkeypatch)
    model = seeded_cnn()  # another object, same weights: what a second process builds
    adapter = TorchAdapter(model)
    assert adapter.has_program(x)
    verdict = adapter._capture(x)
    assert verdict is not None and verdict.note == CAPTURED and verdict.program is not first.program
    with torch.no_grad():
        assert relative_error(adapter.forward(x, bulk=True), model(x)) < CAPTURE_BOUND


def test_a_tampered_entry_is_never_parsed(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = batch()
    TorchAdapter(seeded_cnn())._capture(x)
    (entry,) = entries(store)
    blob = bytearray(entry.read_bytes())
    blob[-100] ^= 0xFF
    entry.write_bytes(bytes(blob))
    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: loads.append(args))
    model = seeded_cnn()
    verdict = TorchAdapter(model)._capture(x)  # captured afresh, stored again
    assert loads == []
    assert verdict is not None and verdict.program is not None
    assert entries(store) == [entry] and entry.read_bytes() != bytes(blob)


def test_an_entry_made_under_another_key_is_refused(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = batch()
    TorchAdapter(seeded_cnn())._capture(x)
    (store / "key").write_bytes(os.urandom(32))  # entries of another store, copied in
    export_refused(monkeypatch)
    verdict = TorchAdapter(seeded_cnn())._capture(x)
    assert verdict is not None and verdict.program is None and "export ran" in verdict.note
    assert entries(store) == []


def test_a_store_others_can_write_to_is_not_used(store: Path) -> None:
    store.mkdir(mode=0o700)
    store.chmod(0o777)
    assert program_store.store_directory() is None
    TorchAdapter(seeded_cnn())._capture(batch())
    assert entries(store) == []
    store.chmod(0o700)
    (store / "key").write_bytes(os.urandom(32))
    (store / "key").chmod(0o644)  # a key others can read proves nothing
    TorchAdapter(seeded_cnn())._capture(batch())
    assert entries(store) == []


def test_the_store_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    default = tmp_path / "cache"
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *_args, **_kw: str(default))
    monkeypatch.delenv(program_store.ENVIRONMENT)
    assert program_store.store_directory() == default / "programs"
    monkeypatch.setenv(program_store.ENVIRONMENT, "off")
    assert program_store.store_directory() is None
    verdict = TorchAdapter(seeded_cnn())._capture(batch())
    assert verdict is not None and verdict.program is not None  # in memory only
    assert entries(default / "programs") == []


class Scaled(nn.Module):
    """A linear layer whose output is scaled by a plain attribute."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(5, 3)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * self.scale


def name_of(model: nn.Module, x: Tensor) -> str | None:
    return program_store.fingerprint(model, x, (True, True))


def test_the_name_changes_with_weights_attributes_shape_and_options() -> None:
    x = torch.randn(4, 5)
    base = name_of(Scaled(2.0), x)
    assert base is not None and base == name_of(Scaled(2.0), x)
    changed = Scaled(2.0)
    with torch.no_grad():
        changed.fc.bias[0] += 1e-6
    others = {
        name_of(changed, x),
        name_of(Scaled(3.0), x),
        name_of(Scaled(2.0), torch.randn(4, 6)),
        name_of(Scaled(2.0), torch.randn(2, 5)),
        name_of(Scaled(2.0), x.double()),
        program_store.fingerprint(Scaled(2.0), x, (False, True)),
    }
    assert len(others) == 6 and base not in others


def test_a_model_holding_what_no_name_can_stand_for_is_captured_in_memory_only(
    store: Path,
) -> None:
    model = Scaled(2.0)
    model.scale_fn = lambda t: t  # a function: which code it runs cannot be named
    assert name_of(model, torch.randn(4, 5)) is None
    adapter = TorchAdapter(model)
    x = torch.randn(8, 5)
    verdict = adapter._capture(x)
    assert verdict is not None and verdict.program is not None
    assert entries(store) == []


def test_a_stored_program_that_no_longer_matches_is_refused_and_captured_afresh(
    store: Path,
) -> None:
    """A program stored under the name of the model's current state, but computing something
    else (a change the name could not see): the check against the eager copy catches it."""
    x = torch.randn(CAPTURED_BATCH, 5)
    model = Scaled(2.0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        wrong = torch.jit.freeze(torch.jit.trace(Scaled(-1.0).eval(), x))
    adapter = TorchAdapter(model)
    copy = adapter.provider.copy(x, adapter.provider.fold_batchnorm, adapter._state())
    program_store.write(program_store.fingerprint(copy, x, (True, True)), wrong)
    verdict = adapter._capture(x)
    assert verdict is not None and verdict.program is not None
    with torch.no_grad():
        assert relative_error(adapter.forward(x, bulk=True), model(x)) < CAPTURE_BOUND


def test_a_built_program_runs_a_run_too_short_to_pay_for_a_new_one(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = seeded_cnn()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    options = {"method": "occlusion", "window": 1, "stride": 1, "target": 0}  # 256 windows
    monkeypatch.setattr(masking, "CAPTURE_WORTH_SECONDS", 3600.0)
    short = salience.explain(model, x, **options, chunk_size=32)
    assert short.info["execution"].startswith("eager: the 256 passes take about")
    TorchAdapter(model)._capture(torch.rand(CAPTURED_BATCH, 3, 16, 16))  # a program built
    fused._CACHE.clear()  # as in a new process: only the store holds it
    export_refused(monkeypatch)
    found = salience.explain(model, x, **options, chunk_size=32)
    assert found.info["execution"] == CAPTURED
    assert relative_error(found.attributions, short.attributions) < CAPTURE_BOUND


def test_the_store_keeps_to_its_size_dropping_the_least_recently_used(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for features in (5, 6, 7):
        TorchAdapter(Scaled(1.0))._capture(torch.randn(8, 5))  # same name: one entry
        model = nn.Sequential(nn.Linear(features, 2))
        TorchAdapter(model)._capture(torch.randn(8, features))
    sizes = {path: path.stat().st_size for path in entries(store)}
    assert len(sizes) == 4
    oldest = min(sizes, key=lambda p: p.stat().st_mtime)
    os.utime(oldest, (1, 1))
    monkeypatch.setattr(program_store, "STORE_BYTES", sum(sizes.values()) - 1)
    TorchAdapter(Scaled(1.0))._capture(torch.randn(4, 5))  # a new entry: the oldest goes
    kept = entries(store)
    assert oldest not in kept and len(set(kept) - set(sizes)) == 1  # the new one is kept
    assert sum(p.stat().st_size for p in kept) <= program_store.STORE_BYTES


def test_the_name_changes_with_the_code_of_the_model_and_of_its_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def act(t):\n    return t.tanh()\n")
    (package / "net.py").write_text(
        "from torch import nn\n"
        "from userpkg.helpers import act\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(5, 3)\n\n"
        "    def forward(self, x):\n"
        "        return act(self.fc(x))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from userpkg.net import Net

    torch.manual_seed(0)
    model, x = Net(), torch.randn(4, 5)
    names = [name_of(model, x)]
    (package / "helpers.py").write_text("def act(t):\n    return t.sigmoid()\n")
    names.append(name_of(model, x))
    (package / "net.py").write_text((package / "net.py").read_text() + "\n# edited\n")
    names.append(name_of(model, x))
    assert None not in names and len(set(names)) == 3
    for name in ("userpkg", "userpkg.net", "userpkg.helpers"):
        sys.modules.pop(name, None)  # this test's package is not left importable


def test_a_store_that_cannot_be_used_leaves_the_capture_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store path that is a file, a key that is a folder, a disk that refuses the write:
    the explanation goes on, captured in memory, and nothing half-written is left."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(program_store.ENVIRONMENT, str(blocker))
    assert program_store.store_directory() is None
    store = tmp_path / "store"
    monkeypatch.setenv(program_store.ENVIRONMENT, str(store))
    (store / "key").mkdir(parents=True)
    verdict = TorchAdapter(seeded_cnn())._capture(batch())
    assert verdict is not None and verdict.program is not None and entries(store) == []
    (store / "key").rmdir()

    def full_disk(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    verdict = TorchAdapter(seeded_cnn())._capture(batch())
    assert verdict is not None and verdict.program is not None
    assert sorted(p.name for p in store.iterdir()) == ["key"]  # no entry, no partial file
