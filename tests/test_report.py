"""Every evaluation result shares one interface: its table (``rows``), its JSON (``to_dict``)
and its files (``save``), the CSV holding exactly the rows and the JSON exactly the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from salience.evaluation.agreement import Agreement, agreement
from salience.evaluation.data_randomization import DataRandomizationResult, TrainedDigits
from salience.evaluation.faithfulness import CurveResult, FaithfulnessReport, MethodFaithfulness
from salience.evaluation.randomization import SanityResult
from salience.evaluation.report import Column, Report, format_rows
from salience.evaluation.similarity import SIMILARITY_METRICS

METRICS = len(SIMILARITY_METRICS)


def _sanity() -> SanityResult:
    similarity = np.linspace(-1.0, 1.0, 2 * 3 * 2 * METRICS).reshape(2, 3, 2, METRICS)
    return SanityResult(
        "cascading", ("a", "b"), ("top", "mid", "low"), similarity, np.zeros((2, 4, 8, 8))
    )


def _data_randomization() -> DataRandomizationResult:
    models = tuple(TrainedDigits(None, labels, 3, 0.9, 0.8) for labels in ("true", "permuted"))
    similarity = np.linspace(0.0, 1.0, 2 * 5 * METRICS).reshape(2, 5, METRICS)
    return DataRandomizationResult(
        ("a", "b"),
        similarity,
        np.zeros((2, 2, 2, 8, 8)),
        np.zeros((2, 8, 8)),
        models,  # type: ignore[arg-type]
    )


def _curves(mode: str, scores: list[list[float]]) -> CurveResult:
    values = torch.tensor(scores, dtype=torch.float64)
    fractions = torch.linspace(0.0, 1.0, values.shape[1], dtype=torch.float64)
    return CurveResult(mode, fractions, values, torch.zeros(len(scores)), "probability", 4)


def _faithfulness() -> FaithfulnessReport:
    entries = tuple(
        MethodFaithfulness(
            name,
            _curves("deletion", [[1.0, 0.5, 0.0], [0.8, 0.2, 0.0]]),
            _curves("insertion", [[0.0, 0.5, 1.0], [0.1, 0.7, 0.9]]),
            (0.25, 0.5),
        )
        for name in ("gradient", "random")
    )
    return FaithfulnessReport(("cat", "dog"), entries)


def _agreement() -> Agreement:
    maps = {
        name: torch.rand(6, 6, generator=torch.Generator().manual_seed(s))
        for s, name in enumerate("abc")
    }
    return agreement(maps)


RESULTS = {
    "sanity_cascading": _sanity,
    "data_randomization": _data_randomization,
    "faithfulness": _faithfulness,
    "agreement": _agreement,
}


@pytest.mark.parametrize("stem", sorted(RESULTS))
def test_each_result_is_a_report_whose_files_hold_its_rows_and_summary(
    stem: str, tmp_path: Path
) -> None:
    result = RESULTS[stem]()
    assert isinstance(result, Report)
    rows = result.rows()
    assert rows and all(set(row) == set(rows[0]) for row in rows)
    written = result.save(tmp_path)
    assert {path.name for path in written} >= {f"{stem}.json", f"{stem}.png"}
    assert json.loads((tmp_path / f"{stem}.json").read_text()) == json.loads(
        json.dumps(result.to_dict())
    )
    table = tmp_path / f"{stem}.csv"
    if stem == "agreement":  # the matrices are the JSON's; compare writes no table
        assert not table.exists() and rows == result.pairs()
    else:
        with table.open(newline="") as file:
            saved = list(csv.DictReader(file))
        assert saved == [{key: str(value) for key, value in row.items()} for row in rows]
    assert all(path.stat().st_size > 0 for path in written)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_result_saved_without_figures_draws_none(tmp_path: Path) -> None:
    written = _sanity().save(tmp_path, figures=False)
    assert sorted(path.name for path in written) == [
        "sanity_cascading.csv",
        "sanity_cascading.json",
    ]


def test_agreement_saves_under_the_name_it_is_given(tmp_path: Path) -> None:
    written = _agreement().save(tmp_path, name="chelsea_agreement")
    assert [path.name for path in written] == ["chelsea_agreement.json", "chelsea_agreement.png"]


def test_printed_tables_align_text_left_and_numbers_right() -> None:
    rows = [{"method": "gradient", "auc": 0.5}, {"method": "rise", "auc": 12.25}]
    text = format_rows(
        rows, [Column("method"), Column("auc", "AUC ↓", ".2f")], indent="  ", gap="  "
    )
    assert text.splitlines() == [
        "  method    AUC ↓",
        "  gradient   0.50",
        "  rise      12.25",
    ]


def test_the_printed_faithfulness_table_is_its_mean_rows() -> None:
    report = _faithfulness()
    lines = report.format_table().splitlines()
    header = "method    deletion AUC ↓  insertion AUC ↑  time (s)  not better than random"
    assert lines[0] == header
    means = [row for row in report.rows() if row["image"] == "mean"]
    # the gradient's curves are the random map's here: it beats it in neither game
    verdicts = {"gradient": ["deletion,", "insertion"], "random": ["(baseline)"]}
    for line, row in zip(lines[1:], means, strict=True):
        assert line.split() == [
            row["method"],
            f"{row['deletion_auc']:.4f}",
            f"{row['insertion_auc']:.4f}",
            f"{row['seconds']:.3f}",
            *verdicts[row["method"]],
        ]
