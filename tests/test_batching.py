"""A batch of N images is explained as the N images one by one.

The model runs in float64. Batched and single passes may sum in another order (oneDNN blocks a
convolution by batch size), so their float64 maps can differ by a few float64 ulps, about 1e-15
relative; the explanation stores maps in float32, and two float64 values that close round to the
same float32 or to adjacent ones. The bound is therefore one float32 rounding, 2⁻²⁴ relative to
each value, plus 1e-12 of the map's largest value for the float64 part.

SmoothGrad draws its noise for the whole batch from one generator, sample-major (image i gets the
i-th block of ``n_samples`` draws): with a fixed seed, image 0 of a batch sees the noise of a single
call, and image i > 0 other draws of the same σ. Its batched map of image i is checked against the
mean of single-image gradients over exactly those noisy copies.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import salience
from conftest import SmallCNN
from salience.api import make_explainer

N = 4
LAYER = "conv2"
SAMPLES = 6
SEED = 7
METHODS = {
    "gradient": {},
    "gradcam": {"layer": LAYER},
    "smoothgrad": {"n_samples": SAMPLES, "seed": SEED},
}


@pytest.fixture(scope="module")
def model() -> SmallCNN:
    return SmallCNN().double().eval()


@pytest.fixture(scope="module")
def batch() -> Tensor:
    return torch.randn(N, 3, 12, 12, generator=torch.Generator().manual_seed(5)).double()


def assert_same_maps(actual: Tensor, expected: Tensor, rounded: float = 0.0) -> None:
    """Equal up to one float32 rounding of float64 maps that agree to 1e-12 (module docstring).

    ``rounded``: a further absolute error of the reference, from float32 roundings in it.
    """
    scale = float(expected.abs().max())
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=2.0**-24, atol=1e-12 * scale + rounded
    )


def single(model: SmallCNN, image: Tensor, method: str, target: int | None) -> Tensor:
    targets = None if target is None else [target]
    return salience.explain(model, image, method=method, target=targets, **METHODS[method])


@pytest.mark.parametrize("targets", [None, [0, 3, 1, 4]], ids=["predicted", "per_image"])
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_explain_on_a_batch_equals_single_calls(
    model: SmallCNN, batch: Tensor, method: str, targets: list[int] | None
) -> None:
    batched = salience.explain(model, batch, method=method, target=targets, **METHODS[method])
    for i in range(N):
        alone = single(model, batch[i : i + 1], method, None if targets is None else targets[i])
        assert torch.equal(batched.targets[i], alone.targets[0])
        assert_same_maps(batched.attributions[i], alone.attributions[0])


def test_smoothgrad_on_a_batch_averages_each_images_own_noisy_copies(
    model: SmallCNN, batch: Tensor
) -> None:
    targets = [0, 3, 1, 4]
    batched = salience.explain(
        model, batch, method="smoothgrad", target=targets, **METHODS["smoothgrad"]
    )
    points = make_explainer(model, "smoothgrad", **METHODS["smoothgrad"]).noisy_inputs(batch)
    for i in range(N):
        copies = points[i * SAMPLES : (i + 1) * SAMPLES]
        gradients = [single(model, copy[None], "gradient", targets[i]) for copy in copies]
        stacked = torch.stack([g.attributions[0].double() for g in gradients])
        # each stored gradient is rounded to float32 once: their mean is off by at most
        # 2⁻²⁴ of the largest of them
        rounded = 2.0**-24 * float(stacked.abs().max())
        assert_same_maps(batched.attributions[i], stacked.mean(dim=0), rounded)
    # image 0 draws the first block of noise, as a single call with the same seed does
    alone = single(model, batch[:1], "smoothgrad", targets[0])
    assert_same_maps(batched.attributions[0], alone.attributions[0])


def test_explain_all_on_a_batch_equals_single_calls(model: SmallCNN, batch: Tensor) -> None:
    options = {"layer": LAYER, "n_samples": SAMPLES, "seed": SEED}
    names = ["gradient", "gradcam", "smoothgrad"]
    batched = salience.explain_all(model, batch, names, **options)
    first = salience.explain_all(model, batch[:1], names, **options)
    for name in names:
        assert_same_maps(batched[name].attributions[0], first[name].attributions[0])
    for i in range(N):
        alone = salience.explain_all(model, batch[i : i + 1], names[:2], layer=LAYER)
        for name in ("gradient", "gradcam"):
            assert_same_maps(batched[name].attributions[i], alone[name].attributions[0])
        # SmoothGrad's image i > 0 draws other noise (module docstring): equal to it alone on
        # the batch, whose map is checked per image above
    alone = salience.explain(model, batch, method="smoothgrad", **METHODS["smoothgrad"])
    assert_same_maps(batched["smoothgrad"].attributions, alone.attributions)


def test_chunked_passes_are_announced_to_the_plan_and_counted_done() -> None:
    from salience.methods.sampling import PassPlan, map_in_chunks, planning

    plan = PassPlan()
    seen = []
    with planning(plan):
        for rows, _ in map_in_chunks(10, lambda rows: torch.zeros(1), 3):
            seen.append((plan.counts(), rows.stop))
    # 10 rows in chunks of 3: 4 passes announced before the first, each counted once done
    assert seen == [((0, 4), 3), ((1, 4), 6), ((2, 4), 9), ((3, 4), 10)]
    assert plan.counts() == (4, 4)
    list(map_in_chunks(5, lambda rows: torch.zeros(1), 2))  # outside planning: not counted
    assert plan.counts() == (4, 4)
