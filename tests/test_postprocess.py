"""Post-processing functions against SciPy / NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from salience.postprocess import (
    clip_percentile,
    gaussian_blur,
    normalize,
    reduce_channels,
    to_display,
    upsample,
)


def test_reductions() -> None:
    x = torch.tensor([[[1.0, -4.0]], [[-3.0, 2.0]], [[2.0, 0.0]]])  # (C=3, H=1, W=2)
    torch.testing.assert_close(reduce_channels(x, "abs_max"), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(reduce_channels(x, "abs_sum"), torch.tensor([[6.0, 6.0]]))
    torch.testing.assert_close(reduce_channels(x, "sum"), torch.tensor([[0.0, -2.0]]))
    torch.testing.assert_close(reduce_channels(x, "l2"), torch.tensor([[14.0, 20.0]]).sqrt())
    with pytest.raises(ValueError, match="unknown channel reduction"):
        reduce_channels(x, "median")


def test_clip_percentile_matches_numpy() -> None:
    x = torch.randn(2, 20, 30)
    clipped = clip_percentile(x, 99.0)
    for i in range(2):
        bound = np.percentile(np.abs(x[i].numpy()), 99.0)
        np.testing.assert_allclose(
            clipped[i].numpy(), np.clip(x[i].numpy(), -bound, bound), rtol=1e-5
        )


def test_normalize_handles_zero_and_constant_maps() -> None:
    maps = torch.stack(
        [torch.zeros(4, 4), torch.full((4, 4), 3.0), torch.arange(16.0).reshape(4, 4)]
    )
    result = normalize(maps)
    assert torch.isfinite(result).all()
    assert float(result[0].abs().max()) == 0 and float(result[1].abs().max()) == 0
    assert float(result[2].min()) == 0 and float(result[2].max()) == 1
    signed = normalize(torch.tensor([[-2.0, 1.0]]), signed=True)
    torch.testing.assert_close(signed, torch.tensor([[-1.0, 0.5]]))


@pytest.mark.parametrize("sigma", [0.7, 2.0, 9.0])
def test_gaussian_blur_equals_scipy(sigma: float) -> None:
    x = torch.randn(2, 17, 23, dtype=torch.float64)
    ours = gaussian_blur(x, sigma)
    for i in range(2):
        reference = ndimage.gaussian_filter(x[i].numpy(), sigma, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(ours[i].numpy(), reference, atol=1e-10)


def test_upsample_and_display_chain() -> None:
    x = torch.rand(3, 7, 7)
    assert upsample(x[0], (14, 21)).shape == (14, 21)
    shown = to_display(x, size=(28, 28), smooth=1.0)
    assert shown.shape == (28, 28) and float(shown.min()) == 0 and float(shown.max()) == 1
