"""The batch runner explains images of one shape together when the methods batch exactly.

The model computes in float64 (its factory is below), so a group's maps and the maps of single
calls differ only by float64 summation order (about 1e-15 relative), then by one float32
rounding: two values that close round to the same float32 or to adjacent ones, one ulp apart,
at most 2⁻²³ relative; plus 1e-12 of the largest value for the float64 part. Its forward passes
are counted: a group of N images takes the passes of one single call.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from model_factories import seeded_digits_net
from salience.loading import LoadOptions
from salience.runner import JobSpec
from salience.runner.inputs import BatchItem
from salience.runner.local import LocalEngine
from salience.runner.work import GROUP_SIZE, ItemResult, ItemWorker, Task, group_size

HERE = Path(__file__).parent
OPTIONS = LoadOptions(size=32)
METHODS = ("gradient", "gradcam")
WHITE = "the model refuses a white image"


class Counted(nn.Module):
    """The seeded digits net in float64, counting its forward passes; it raises on a batch
    holding a white image (every pixel at ``white``, set by the test)."""

    calls: ClassVar[int] = 0
    white: ClassVar[float] = float("inf")

    def __init__(self) -> None:
        super().__init__()
        self.net = seeded_digits_net().double()

    def forward(self, x: Tensor) -> Tensor:
        type(self).calls += 1
        if bool((x.flatten(1).amin(dim=1) >= type(self).white).any()):
            raise ValueError(WHITE)
        return self.net(x.double())


def counted_net() -> nn.Module:
    return Counted()


@pytest.fixture(autouse=True)
def _factory_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tasks(count: int, *, seed: int = 0) -> list[Task]:
    """``count`` noisy PNGs of 40×48 pixels (never white: the noise is clipped below 255)."""
    generator = np.random.default_rng(seed)
    made = []
    for i in range(count):
        base = generator.integers(0, 200, 3)
        pixels = np.clip(base + generator.normal(0, 20, (40, 48, 3)), 0, 254).astype(np.uint8)
        made.append(Task(BatchItem(path=f"im{i}.png", key=f"im{i}", label=None), png(pixels)))
    return made


def white_task(worker: ItemWorker) -> Task:
    data = png(np.full((40, 48, 3), 255, np.uint8))
    Counted.white = float(worker.loaded.preset.prepare(data).tensor.min())
    return Task(BatchItem(path="white.png", key="white", label=None), data)


def maps(result: ItemResult, method: str) -> Tensor:
    with np.load(io.BytesIO(result.files[f"{method}.npz"]), allow_pickle=False) as stored:
        return torch.from_numpy(stored["attributions"])


def assert_same_results(grouped: ItemResult, single: ItemResult) -> None:
    assert grouped.key == single.key
    assert grouped.record["status"] == single.record["status"] == "done"
    for field in ("predicted", "explained", "files"):
        assert grouped.record[field] == single.record[field]
    assert grouped.record["probability"] == pytest.approx(single.record["probability"], rel=1e-6)
    for method in METHODS:
        expected = maps(single, method).double()
        scale = float(expected.abs().max())
        torch.testing.assert_close(
            maps(grouped, method).double(), expected, rtol=2.0**-23, atol=1e-12 * scale
        )


@pytest.fixture(scope="module")
def worker() -> ItemWorker:
    spec = JobSpec(model="test_batch_groups:counted_net", load_options=OPTIONS, methods=METHODS)
    made = ItemWorker(spec)
    made.process(tasks(1, seed=9)[0])  # the first call's one-off probes are not counted below
    return made


def passes(work) -> tuple[list[ItemResult], int]:
    before = Counted.calls
    results = work()
    return results, Counted.calls - before


def test_a_group_gives_the_maps_of_single_calls_with_the_passes_of_one(
    worker: ItemWorker,
) -> None:
    todo = tasks(6)
    singles, single_passes = passes(lambda: [worker.process(task) for task in todo])
    grouped, group_passes = passes(lambda: worker.process_all(todo))
    assert single_passes == len(todo) * group_passes  # one call's passes for the whole group
    assert group_passes == 2  # gradient and gradcam: one forward (and backward) pass each
    for together, alone in zip(grouped, singles, strict=True):
        assert_same_results(together, alone)


def test_a_bad_image_in_a_group_fails_alone(worker: ItemWorker) -> None:
    good = tasks(3, seed=1)
    broken = Task(BatchItem(path="broken.png", key="broken", label=None), b"not a png")
    todo = [good[0], white_task(worker), good[1], broken, good[2]]
    results = worker.process_all(todo)
    assert [result.key for result in results] == [task.item.key for task in todo]
    assert results[1].record["status"] == results[3].record["status"] == "failed"
    assert WHITE in results[1].record["error"]
    assert "is not an image Pillow can read" in results[3].record["error"]
    for result, task in zip([results[0], results[2], results[4]], good, strict=True):
        assert_same_results(result, worker.process(task))


def test_groups_are_bounded_and_only_for_methods_that_batch_exactly() -> None:
    assert group_size(JobSpec(model="x", methods=METHODS)) == GROUP_SIZE
    assert group_size(JobSpec(model="x", methods=("gradient", "smoothgrad"))) == 1
    assert group_size(JobSpec(model="x", methods=("rise",))) == 1
    engine, spec = LocalEngine(2), JobSpec(model="x", methods=METHODS)
    assert engine.chunk_size(spec, tasks(5)) == 3  # both workers busy on a small job
    assert engine.chunk_size(spec, tasks(40)) == GROUP_SIZE
    assert engine.chunk_size(spec, iter(tasks(40))) == GROUP_SIZE  # no length: a full group


def test_a_group_larger_than_the_bound_is_split(worker: ItemWorker) -> None:
    todo = tasks(GROUP_SIZE + 1, seed=2)
    _, counted = passes(lambda: worker.process_all(todo))
    assert counted == 2 * 2  # two calls: a full group and one image
