"""Occlusion and RISE: known regions, Captum's Occlusion, seeds, chunking, the engine's errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import relative_error
from salience.errors import InvalidInputError
from salience.methods.masking import ChunkMemoryError, masked_scores
from salience.methods.perturbation import RISE, window_starts
from salience.targets import Selection

ROWS, COLS = slice(8, 16), slice(20, 28)


class RegionSum(nn.Module):
    """The score is the sum of the input over one region: the answer is that region."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, ROWS, COLS].sum(dim=(1, 2, 3))


def region_indicator(size: int = 32) -> Tensor:
    indicator = torch.zeros(size, size)
    indicator[ROWS, COLS] = 1
    return indicator


def correlation(a: Tensor, b: Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().float(), b.flatten().float()]))[0, 1])


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


# --- occlusion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "stride"), [(1, 1), (2, 2), (4, 4)])
def test_occlusion_of_a_region_sum_is_exactly_that_region(window: int, stride: int) -> None:
    x = torch.rand(1, 3, 32, 32) + 0.5
    explanation = salience.explain(RegionSum(), x, method="occlusion", window=window, stride=stride)
    # windows aligned with the region: each pixel's drop is the region's sum inside its window
    expected = torch.zeros(32, 32)
    per_pixel = x[0].sum(0)
    for r in range(0, 32, window):
        for c in range(0, 32, window):
            block = (slice(r, r + window), slice(c, c + window))
            expected[block] = (per_pixel[block] * region_indicator()[block]).sum()
    # float32 drops are differences of sums of ~200: equal to ~1e-7 of that
    torch.testing.assert_close(explanation.attributions[0, 0], expected, atol=1e-4, rtol=1e-6)
    assert (explanation.attributions[0, 0] != 0).float().equal(region_indicator())


@pytest.mark.parametrize("baseline", ["zeros", "mean", 0.25])
def test_occlusion_equals_captums_occlusion(baseline: object) -> None:
    from captum.attr import Occlusion as CaptumOcclusion

    model, x = classifier(), torch.randn(2, 3, 16, 16)
    ours = salience.explain(
        model,
        x,
        method="occlusion",
        window=4,
        stride=2,
        baseline=baseline,
        target=1,
        chunk_size=5,
    )
    if baseline == "mean":
        reference_baseline = x.mean(dim=(2, 3), keepdim=True)
    else:
        reference_baseline = 0.0 if baseline == "zeros" else baseline
    theirs = CaptumOcclusion(model).attribute(
        x,
        sliding_window_shapes=(3, 4, 4),
        strides=(3, 2, 2),
        target=1,
        baselines=reference_baseline,
        perturbations_per_eval=7,
    )
    for channel in range(3):  # the window spans all channels: every channel gets the map
        assert relative_error(ours.attributions[:, 0], theirs[:, channel]) < 1e-5


def test_occlusion_with_stride_equal_to_window_is_the_hand_computed_drop() -> None:
    """A linear score ``w·x`` with windows tiling the image: each pixel's value is the drop
    of its own window, the sum of ``w·x`` over that window, computed here by hand in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 6, 3)).double()
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    explanation = salience.explain(model, x, method="occlusion", window=2, stride=2, target=1)
    contribution = (model[1].weight[1].reshape(2, 4, 6) * x[0]).sum(0).detach()
    expected = torch.zeros(4, 6, dtype=torch.float64)
    for r in range(0, 4, 2):
        for c in range(0, 6, 2):
            expected[r : r + 2, c : c + 2] = contribution[r : r + 2, c : c + 2].sum()
    found = explanation.attributions[0, 0].double()
    assert found.isfinite().all()
    # each score is a float32 sum of 48 products and a bias: its rounding is within
    # 48 ulps of the sum of their magnitudes (a drop is two scores)
    magnitude = float(contribution.abs().sum() + model[1].bias[1].detach().abs())
    bound = 2 * 48 * torch.finfo(torch.float32).eps * magnitude
    torch.testing.assert_close(found, expected, rtol=0, atol=bound)


@pytest.mark.parametrize(
    ("window", "stride", "fix"),
    [(2, 8, "stride of at most 2"), ((4, 2), 3, "stride of at most 2"), (2, (2, 5), "at least 5")],
)
def test_a_stride_larger_than_the_window_is_refused(
    window: object, stride: object, fix: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"stride .* is larger than its window .*{fix}"):
        salience.make_explainer(classifier(), "occlusion", window=window, stride=stride)


@pytest.mark.parametrize(
    ("window", "stride"), [(16, 8), (4, 2), (5, 2), (1, 1), ((4, 6), [2, 3]), ((3, 1), [1, 1])]
)
def test_the_default_stride_is_half_the_window(window: object, stride: object) -> None:
    explainer = salience.make_explainer(classifier(), "occlusion", window=window)
    assert explainer.params()["stride"] == stride


def test_a_window_alone_covers_every_pixel_and_gives_the_map_of_half_its_stride() -> None:
    """``window=4`` without a stride (the old default stride of 8 left pixels uncovered)."""
    model = classifier()
    x = torch.rand(1, 3, 20, 20)
    alone = salience.explain(model, x, method="occlusion", window=4, target=1)
    assert alone.attributions.isfinite().all()
    explicit = salience.explain(model, x, method="occlusion", window=4, stride=2, target=1)
    assert torch.equal(alone.attributions, explicit.attributions)


def test_the_default_window_keeps_its_stride_of_8() -> None:
    model = classifier()
    x = torch.rand(1, 3, 40, 40)
    default = salience.explain(model, x, method="occlusion", target=0)
    explicit = salience.explain(model, x, method="occlusion", window=16, stride=8, target=0)
    assert default.params["stride"] == 8
    assert torch.equal(default.attributions, explicit.attributions)


def test_windows_reach_the_far_edges() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 8) == [0]
    with pytest.raises(ValueError, match="window of 5 does not fit in 4"):
        window_starts(4, 5, 1)


def test_occlusion_top_k_and_bad_options() -> None:
    model, x = classifier(), torch.randn(1, 3, 8, 8)
    explanation = salience.explain(model, x, method="occlusion", window=2, stride=2, target="top-3")
    assert explanation.attributions.shape == (1, 3, 8, 8)
    assert explanation.info == {"windows": 16}
    with pytest.raises(ValueError, match=r"rows of features .* use feature_ablation"):
        salience.explain(nn.Linear(4, 2), torch.randn(1, 4), method="occlusion")
    with pytest.raises(ValueError, match="perturbs images"):
        salience.explain(nn.Linear(4, 2), torch.randn(4), method="occlusion")
    with pytest.raises(ValueError, match="unknown baseline 'gray'"):
        salience.make_explainer(model, "occlusion", baseline="gray")
    with pytest.raises(ValueError, match="window must be a positive int"):
        salience.make_explainer(model, "occlusion", window=0)


# --- RISE --------------------------------------------------------------------------------------


def test_rise_converges_to_the_region() -> None:
    x = torch.ones(1, 3, 32, 32)
    converged = RISE(RegionSum(), n_masks=40_000, grid=10, seed=1, chunk_size=4000)(x)
    estimate = RISE(RegionSum(), n_masks=2000, grid=10, seed=0, chunk_size=500)(x)
    converged_map, estimate_map = converged.attributions[0, 0], estimate.attributions[0, 0]
    assert correlation(estimate_map, converged_map) > 0.9
    # the converged map is the region blurred by the masks' own correlation length
    assert correlation(converged_map, region_indicator()) > 0.8
    row, col = divmod(int(converged_map.argmax()), 32)
    assert ROWS.start <= row < ROWS.stop and COLS.start <= col < COLS.stop
    inside = converged_map[region_indicator().bool()]
    assert inside.min() > converged_map[~region_indicator().bool()].mean()


def test_rise_weighs_masks_by_the_class_probability_as_in_the_paper() -> None:
    model, x = classifier(), torch.randn(1, 3, 16, 16)
    rise = RISE(model, n_masks=50, grid=4, keep=0.4, seed=3, chunk_size=7)
    explanation = rise(x, target=2)
    masks = rise.mask_maker((16, 16), torch.device("cpu"))(slice(0, 50))
    with torch.no_grad():
        probabilities = torch.softmax(model(x * masks), dim=1)[:, 2]
    expected = (probabilities[:, None, None] * masks[:, 0]).sum(0) / (50 * 0.4)
    assert relative_error(explanation.attributions[0, 0], expected) < 1e-5
    assert explanation.info["weights"] == "probability"
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1


def test_rise_with_every_cell_kept_is_the_score_everywhere() -> None:
    model, x = classifier(), torch.randn(1, 3, 8, 8)
    explanation = salience.explain(model, x, method="rise", n_masks=10, keep=1.0, softmax=False)
    expected = model(x)[0].max().detach()
    torch.testing.assert_close(
        explanation.attributions[0, 0], expected.expand(8, 8), atol=1e-5, rtol=1e-6
    )


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_the_same_seed_gives_the_same_map_for_any_chunk_size(chunk_size: int) -> None:
    # The masks are the same for any chunk size; the scores are not bit for bit, since a CPU may
    # pick other kernels for another batch size. In float64 they differ by ~1e-16, so the float32
    # maps differ by at most one float32 rounding of the scores (2^-23 relative).
    model, x = classifier().double(), torch.randn(2, 3, 12, 12, dtype=torch.float64)
    reference = salience.explain(model, x, method="rise", n_masks=40, seed=5, chunk_size=8)
    again = salience.explain(model, x, method="rise", n_masks=40, seed=5, chunk_size=chunk_size)
    assert relative_error(again.attributions, reference.attributions) < 2**-22
    other = salience.explain(model, x, method="rise", n_masks=40, seed=6, chunk_size=chunk_size)
    assert relative_error(other.attributions, reference.attributions) > 1e-3
    occlusion = [
        salience.explain(model, x, method="occlusion", window=3, stride=2, chunk_size=size)
        for size in (1, chunk_size)
    ]
    assert relative_error(occlusion[1].attributions, occlusion[0].attributions) < 2**-22


def test_rise_options_are_checked() -> None:
    model = classifier()
    for options, message in [
        ({"n_masks": 0}, "n_masks"),
        ({"grid": 0}, "grid"),
        ({"keep": 0.0}, "keep"),
    ]:
        with pytest.raises(ValueError, match=message):
            salience.make_explainer(model, "rise", **options)


# --- the engine --------------------------------------------------------------------------------


class OutOfMemory:
    """A black-box adapter whose forward pass runs out of memory."""

    is_adapter = True
    device = torch.device("cpu")

    def prepare_input(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, *, chunk_size: int | None = None, bulk: bool = False) -> Tensor:
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB")


def test_a_chunk_that_does_not_fit_in_memory_names_a_chunk_size_that_might() -> None:
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(
        ChunkMemoryError, match=r"chunk of 64 .* pass a smaller chunk_size \(e.g. 16\)"
    ):
        masked_scores(
            OutOfMemory(),
            x,
            lambda rows: torch.ones(rows.stop - rows.start, 1, 8, 8),
            100,
            Selection(torch.tensor([[0]])),
            "logit",
            chunk_size=64,
        )


def test_black_box_methods_run_on_a_black_box_and_others_say_which_do() -> None:
    from salience.adapters.base import GradientsUnavailableError

    with pytest.raises(GradientsUnavailableError, match="occlusion, rise"):
        salience.make_explainer(OutOfMemory(), "gradcam")
    assert not salience.make_explainer(OutOfMemory(), "rise").needs_gradients
