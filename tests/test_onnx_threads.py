"""onnxruntime owns the cores while it runs: torch keeps one thread, restored after, also on
error, and an occlusion run on an ONNX model keeps torch on one thread from start to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import salience
from salience.adapters.onnx import OnnxAdapter
from test_onnx import export


class Recorder:
    """Stands in for an onnxruntime session: records torch's thread count at each run."""

    def __init__(self, session: object, *, fail: bool = False) -> None:
        self.session = session
        self.fail = fail
        self.threads: list[int] = []

    def run(self, names: object, feed: dict) -> list:
        self.threads.append(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("the runtime failed")
        return self.session.run(names, feed)

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    return export(net, path, torch.zeros(1, 3, 8, 8))


@pytest.fixture
def two_threads() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("two_threads")
def test_torch_runs_one_thread_while_onnxruntime_runs_and_gets_its_threads_back(
    model_path: Path,
) -> None:
    adapter = OnnxAdapter(model_path)
    adapter.session = recorder = Recorder(adapter.session)
    adapter.forward(torch.rand(5, 3, 8, 8), chunk_size=2)
    assert recorder.threads == [1, 1, 1]
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("two_threads")
def test_the_thread_count_comes_back_when_onnxruntime_fails(model_path: Path) -> None:
    adapter = OnnxAdapter(model_path)
    adapter.session = Recorder(adapter.session, fail=True)
    with pytest.raises(salience.errors.InvalidInputError, match="the runtime failed"):
        adapter.forward(torch.rand(2, 3, 8, 8))
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("two_threads")
def test_occlusion_keeps_torch_on_one_thread_between_the_runs_too(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import salience.methods.masking as masking

    adapter = OnnxAdapter(model_path)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = salience.explain(adapter, x, method="occlusion", window=2, stride=1)
    seen: list[int] = []
    scores = masking.target_scores

    def recording_scores(*args: object) -> torch.Tensor:
        seen.append(torch.get_num_threads())  # between two onnxruntime runs
        return scores(*args)

    monkeypatch.setattr(masking, "target_scores", recording_scores)
    found = salience.explain(adapter, x, method="occlusion", window=2, stride=1)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    assert torch.equal(found.attributions, expected.attributions)
