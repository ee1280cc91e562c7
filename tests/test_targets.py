"""Parsing and resolving targets; the errors a user sees."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import salience
from salience.targets import (
    ClassIndex,
    Predicted,
    TargetError,
    TopK,
    parse_target,
    resolve,
)

NAMES = ["tench", "goldfish", "great white shark", "tabby", "tiger cat", "Egyptian cat"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, Predicted()),
        ("predicted", Predicted()),
        (3, ClassIndex(3)),
        ("4", ClassIndex(4)),
        ("top-3", TopK(3)),
        ("top5", TopK(5)),
        ([1, 2], ClassIndex((1, 2))),
        ("tabby", ClassIndex(3)),
        ("Tiger Cat", ClassIndex(4)),
        ("egypt", ClassIndex(5)),  # a part of one name only
        (" GOLD ", ClassIndex(1)),
    ],
)
def test_parse(given: object, expected: object) -> None:
    assert parse_target(given, NAMES) == expected


def test_unknown_class_name_suggests_close_matches() -> None:
    with pytest.raises(TargetError, match=r"unknown class name 'tabbby'.*'tabby'"):
        parse_target("tabbby", NAMES)
    with pytest.raises(TargetError, match="'Egyptian cat'"):
        parse_target("cat egyptian", [*NAMES, "cat"])


def test_a_part_of_several_names_is_refused_with_them() -> None:
    expected = r"'cat' is part of 2 class names.*'tiger cat', 'Egyptian cat'"
    with pytest.raises(TargetError, match=expected):
        parse_target("cat", NAMES)


def test_bad_strings() -> None:
    with pytest.raises(TargetError, match="top-K"):
        parse_target("top-0", NAMES)
    with pytest.raises(TargetError, match="no class names"):
        parse_target("tabby", None)


def test_out_of_range_index_names_the_range() -> None:
    with pytest.raises(TargetError, match=r"class index 1000 is out of range.*0\.\.999"):
        resolve(ClassIndex(1000), torch.zeros(2, 1000))


def test_wrong_number_of_indices() -> None:
    with pytest.raises(TargetError, match="3 class indices given for a batch of 2"):
        resolve(ClassIndex((1, 2, 3)), torch.zeros(2, 5))


def test_output_that_is_not_n_by_classes_is_rejected() -> None:
    model = nn.Conv2d(3, 2, 1)
    with pytest.raises(TargetError, match=r"not \(N, classes\).*callable target"):
        salience.explain(model, torch.randn(1, 3, 4, 4))
    explanation = salience.explain(
        model, torch.randn(1, 3, 4, 4), target=lambda o: o[:, 1].sum((1, 2))
    )
    assert explanation.attributions.shape == (1, 1, 3, 4, 4)


def test_probability_needs_several_outputs() -> None:
    with pytest.raises(TargetError, match="two or more outputs"):
        salience.explain(nn.Linear(3, 1), torch.randn(2, 3), score="probability")


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown method 'smothgrad'.*smoothgrad.*Known: "):
        salience.explain(nn.Linear(3, 2), torch.randn(1, 3), method="smothgrad")
