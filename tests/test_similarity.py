"""Similarity measures of the sanity checks and the agreement between methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from salience.evaluation.agreement import agreement
from salience.evaluation.similarity import (
    comparable,
    comparison_size,
    hog_similarity,
    similarities,
    spearman,
    ssim,
    top_k_iou,
)


def _map(seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_comparable_is_the_papers_normalization() -> None:
    saliency = _map(0)
    # reference: channel sum of |map|, clip at the 99th percentile, scale to [0, 1]
    summed = saliency.abs().sum(0).numpy()
    clipped = np.minimum(summed, np.percentile(summed, 99))
    expected = (clipped - clipped.min()) / (clipped.max() - clipped.min())
    np.testing.assert_allclose(comparable(saliency, (32, 32), signed=False), expected, atol=1e-12)

    signed = saliency.sum(0).numpy()
    bound = np.percentile(np.abs(signed), 99)
    expected_signed = np.clip(signed, -bound, bound) / bound
    np.testing.assert_allclose(
        comparable(saliency, (32, 32), signed=True), expected_signed, atol=1e-12
    )


def test_comparable_upsamples_a_layer_map_to_the_compared_size() -> None:
    cam = _map(1, (7, 7)).abs()
    shown = comparable(cam, (28, 28), signed=False)
    assert shown.shape == (28, 28) and shown.min() >= 0.0 and shown.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected a map"):
        comparable(_map(1, (1, 2, 3, 4)), (8, 8), signed=False)


def test_spearman_is_the_correlation_of_ranks() -> None:
    a, b = _map(2, (16, 16)).numpy(), _map(3, (16, 16)).numpy()
    ranks = np.corrcoef(rankdata(a.ravel()), rankdata(b.ravel()))[0, 1]
    assert spearman(a, b) == pytest.approx(ranks, abs=1e-12)
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)  # any increasing function: 1
    assert spearman(a, -(a**3)) == pytest.approx(-1.0)


def test_constant_maps_have_a_defined_similarity() -> None:
    varying, flat = _map(4, (8, 8)).numpy(), np.zeros((8, 8))
    assert spearman(flat, flat) == 1.0
    assert spearman(varying, flat) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        spearman(varying, np.zeros((4, 4)))


def test_ssim_and_hog_are_one_for_equal_maps_and_lower_for_different_ones() -> None:
    a = comparable(_map(5), (32, 32), signed=False)
    b = comparable(_map(6), (32, 32), signed=False)
    assert ssim(a, a) == pytest.approx(1.0)
    assert hog_similarity(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 0.5 and hog_similarity(a, b) < 0.5
    blob = np.exp(-((np.arange(32)[:, None] - 16) ** 2 + (np.arange(32) - 16) ** 2) / 40.0)
    shifted = np.roll(blob, 2, axis=1)
    assert ssim(blob, shifted) > ssim(blob, a)  # a shifted blob is closer than noise
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    assert comparison_size((8, 8)) == (32, 32) and comparison_size((12, 20)) == (36, 60)
    assert comparison_size((224, 224)) == (224, 224)


def test_top_k_iou_counts_the_shared_top_pixels() -> None:
    a = np.arange(100, dtype=float)  # top 10: 90..99
    b = a.copy()
    b[[95, 96, 97, 98, 99]] = -1.0  # top 10 of b: 85..94 -> 5 shared of 15 in the union
    assert top_k_iou(a, a, 0.1) == 1.0
    assert top_k_iou(a, b, 0.1) == pytest.approx(5 / 15)
    assert top_k_iou(a, -a, 0.1) == 0.0
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        top_k_iou(a, b, 0.0)


def test_similarities_of_a_map_with_itself_and_with_its_negation() -> None:
    saliency = _map(7)
    same = similarities(saliency, saliency, (32, 32))
    assert all(value == pytest.approx(1.0) for value in same.values())
    negated = similarities(saliency, -saliency, (32, 32))
    # the absolute measures cannot see the sign; the signed rank correlation flips
    assert negated["spearman_abs"] == pytest.approx(1.0)
    assert negated["ssim"] == pytest.approx(1.0)
    assert negated["spearman_signed"] == pytest.approx(-1.0)


def test_agreement_matrices(tmp_path) -> None:
    base = _map(8)
    maps = {"a": base, "b": base * 3.0, "c": _map(9), "cam": base.abs().sum(0)[::4, ::4]}
    result = agreement(maps, top_fraction=0.2)
    assert result.methods == ("a", "b", "c", "cam") and result.size == (32, 32)
    for matrix in (result.spearman, result.iou):
        np.testing.assert_array_equal(matrix, matrix.T)
        np.testing.assert_array_equal(np.diag(matrix), 1.0)
    assert result.spearman[0, 1] == pytest.approx(1.0) and result.iou[0, 1] == 1.0
    shown = {k: comparable(v, (32, 32), signed=False) for k, v in maps.items()}
    assert result.spearman[0, 2] == pytest.approx(spearman(shown["a"], shown["c"]))
    assert result.iou[2, 3] == pytest.approx(top_k_iou(shown["c"], shown["cam"], 0.2))
    assert len(result.pairs()) == 6

    saved = json.loads(result.save_json(tmp_path / "agreement.json").read_text())
    assert saved["methods"] == list(result.methods)
    np.testing.assert_allclose(saved["spearman"], result.spearman)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("maps", "fraction", "message"),
    [
        ({"a": torch.ones(4, 4)}, 0.1, "at least 2"),
        ({"a": torch.ones(8, 8)} | {"b": torch.ones(8, 8)}, 1.5, "top_fraction"),
    ],
)
def test_agreement_rejects_bad_input(maps: dict, fraction: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agreement(maps, top_fraction=fraction)
