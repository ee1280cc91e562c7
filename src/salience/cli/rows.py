"""``salience explain rows.csv`` and ``salience batch rows.parquet``: tabular models' features.

The rows of a CSV or Parquet table (:mod:`salience.tabular`) are explained with the methods
that fit feature vectors ``(N, F)`` — gradient, gradient × input, Integrated Gradients,
SmoothGrad, feature ablation — and written as tables of attributions (one row per input row
and target, one column per feature) with their charts (:mod:`salience.tabular_plots`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salience.cli.arguments import (
    at_least,
    checked_target,
    load_options_from_args,
    method_names,
    method_values,
)
from salience.errors import InvalidInputError

if TYPE_CHECKING:
    from torch import Tensor

    from salience.explanation import Explanation
    from salience.loading import LoadedModel
    from salience.tabular import Rows

ROW_METHODS = "gradient_x_input,integrated_gradients,feature_ablation"
"""The methods ``salience explain rows.csv`` runs by default."""
PRINTED_ROWS = 5
"""Rows whose predictions are printed."""


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of tables of feature rows (CSV/Parquet input)."""
    from salience.tabular import MAX_ROWS

    group = parser.add_argument_group(
        "feature rows", "when the input is a .csv or .parquet table of features"
    )
    group.add_argument(
        "--features",
        metavar="A,B,...",
        help="the columns the model takes, in its order (default: every numeric column)",
    )
    group.add_argument(
        "--max-rows",
        type=at_least(1),
        default=MAX_ROWS,
        metavar="N",
        help=f"refuse a table of more rows than this (default {MAX_ROWS})",
    )
    group.add_argument(
        "--reference",
        metavar="TABLE",
        help="a table whose feature means are the baseline (Integrated Gradients, ablation)",
    )
    group.add_argument(
        "--groups",
        metavar="A+B,C+D",
        help="features ablated together by feature_ablation ('+' joins, ',' separates groups)",
    )


@dataclass(frozen=True)
class ExplainedRows:
    """The rows of one table, explained."""

    rows: Rows
    loaded: LoadedModel
    explanations: dict[str, Explanation]
    outputs: Tensor


class TakesSignalsError(Exception):
    """Raised while opening the model of a CSV when it takes signals ``(N, C, L)``: the CSV is
    then a signal, one column per channel, not a table of feature rows."""


def explained_rows(args: argparse.Namespace, table: str, methods: list[str]) -> ExplainedRows:
    """Read ``table``, open the model on its rows and explain them with ``methods`` (by
    default, for a black box, those of them that need no gradients)."""
    import torch

    from salience.adapters.base import DifferentiableAdapter
    from salience.api import explain_all, make_explainer, method_options
    from salience.loading import open_model
    from salience.methods import black_box_methods
    from salience.models.loader import input_width, takes_signals
    from salience.tabular import feature_means, parse_features, read_rows

    features = parse_features(args.features)
    read: list[Rows] = []

    def first_row(adapter: Any) -> Tensor:
        if takes_signals(adapter):
            raise TakesSignalsError
        # The model's width, where its first layer says it, checks the table's columns.
        read.append(read_rows(table, features, width=input_width(adapter), max_rows=args.max_rows))
        return torch.zeros(1, len(read[0].features))

    loaded = open_model(args.model, load_options_from_args(args), sample=first_row)
    rows = read[0]
    if args.method == ROW_METHODS and not isinstance(loaded.adapter, DifferentiableAdapter):
        methods = black_box_methods()  # by default, what a black box (ONNX) can give
        methods = [m for m in method_names(ROW_METHODS) if m in methods]
    target = checked_target(args.target, loaded)
    values = method_values(args)
    if args.reference is not None:
        means = feature_means(args.reference, rows.features, max_rows=args.max_rows)
        values["baseline"] = torch.from_numpy(means).float()
    if args.groups is not None:
        values["feature_mask"] = feature_mask(args.groups, rows.features)
    explainers = [make_explainer(loaded.adapter, m, **method_options(m, values)) for m in methods]
    x = torch.from_numpy(rows.values).float()
    explanations = explain_all(
        loaded.adapter,
        x,
        explainers,
        target=target,
        score=args.score,
        class_names=loaded.class_names,
    )
    named = {
        name: e.with_names(loaded.class_names, model=loaded.name).with_features(rows.features)
        for name, e in explanations.items()
    }
    return ExplainedRows(rows, loaded, named, loaded.adapter.forward(x))


def feature_mask(text: str, features: tuple[str, ...]) -> Tensor:
    """``--groups age+income,fee+tax`` as a feature mask: one id per group, the other features
    alone.

    Raises
    ------
    InvalidInputError
        For a name that is no feature, or a feature in two groups.
    """
    import torch

    ids = list(range(len(features)))
    seen: set[str] = set()
    for group in (part for part in text.split(",") if part.strip()):
        members = [name.strip() for name in group.split("+")]
        for name in members:
            if name not in features:
                raise InvalidInputError(
                    f"--groups names {name!r}, which is no feature (features: "
                    f"{', '.join(features)})"
                )
            if name in seen:
                raise InvalidInputError(f"--groups puts {name!r} in two groups; give it one")
            seen.add(name)
        first = features.index(members[0])
        for name in members:
            ids[features.index(name)] = first
    return torch.tensor(ids)


def attribution_rows(result: ExplainedRows, method: str) -> list[dict[str, Any]]:
    """One record per input row and target: ``row``, ``target``, ``score`` and each feature."""
    explanation = result.explanations[method]
    names = explanation.target_names
    records = []
    for n in range(len(explanation)):
        for k in range(explanation.targets.shape[1]):
            index = int(explanation.targets[n, k])
            record: dict[str, Any] = {
                "row": n + 1,
                "target": names[n][k] if names else str(index),
                "score": float(explanation.scores[n, k]),
            }
            values = explanation.attributions[n, k].double().tolist()
            record.update(zip(result.rows.features, values, strict=True))
            records.append(record)
    return records


def save_charts(result: ExplainedRows, method: str, stem: str, folder: Path) -> list[Path]:
    """Write the per-row bar charts and the summary over the rows; return their paths."""
    from salience.tabular_plots import chart_titles, rows_figure, summary_figure
    from salience.viz import save_figure

    explanation = result.explanations[method]
    first = explanation.attributions[:, 0].double().numpy()
    names = result.rows.features
    summary = f"{method} over {len(first)} rows of {result.rows.source}"
    return [
        save_figure(
            rows_figure(first, names, chart_titles(explanation)), folder / f"{stem}_rows.png"
        ),
        save_figure(
            summary_figure(first, result.rows.values, names, title=summary),
            folder / f"{stem}_summary.png",
        ),
    ]


def _print_predictions(result: ExplainedRows) -> None:
    """The predicted class (and its probability) or the value of the first rows."""
    import torch

    outputs, names = result.outputs, result.loaded.class_names
    print(f"{result.rows.source}: {len(result.rows)} rows, predictions of {result.loaded.name}")
    classifier = outputs.ndim == 2 and outputs.shape[1] > 1
    for n in range(min(PRINTED_ROWS, len(outputs))):
        if classifier:
            probabilities = torch.softmax(outputs[n].double(), dim=0)
            index = int(probabilities.argmax())
            print(f"  row {n + 1}: {names[index]} {float(probabilities[index]):.1%}")
        else:
            print(f"  row {n + 1}: {float(outputs[n].reshape(-1)[0]):.6g}")
    if len(outputs) > PRINTED_ROWS:
        print(f"  ... and {len(outputs) - PRINTED_ROWS} more")


def _print_top_features(result: ExplainedRows, method: str, count: int = 5) -> None:
    from salience.tabular_plots import top_features

    first = result.explanations[method].attributions[:, 0].double().numpy()
    mean = abs(first).mean(axis=0)
    top = ", ".join(f"{result.rows.features[i]} {mean[i]:.3g}" for i in top_features(first, count))
    print(f"  {method}: mean |attribution| {top}")


def run_explain_rows(args: argparse.Namespace, table: str) -> int:
    """``salience explain rows.csv``: a CSV of attributions per method, its charts, raw maps."""
    from salience.tabular import write_table

    result = explained_rows(args, table, method_names(args.method))
    _print_predictions(result)
    output = Path(args.output)
    written: list[Path] = []
    for method in result.explanations:
        stem = output / f"{Path(table).stem}_{method}"
        written += result.explanations[method].save(stem)
        written.append(write_table(stem.with_suffix(".csv"), attribution_rows(result, method)))
        written += save_charts(result, method, stem.name, output)
        _print_top_features(result, method)
    print(f"wrote {', '.join(path.name for path in written)} to {output}/")
    return 0


def run_batch_rows(args: argparse.Namespace) -> int:
    """``salience batch rows.parquet``: one table of every method's attributions, and charts."""
    from salience.tabular import write_table

    result = explained_rows(args, args.input, method_names(args.method))
    methods = list(result.explanations)
    output = Path(args.output)
    records = []
    written: list[Path] = []
    for method in methods:
        records += [{"method": method, **r} for r in attribution_rows(result, method)]
        written += save_charts(result, method, method, output)
        _print_top_features(result, method)
    suffix = ".parquet" if Path(args.input).suffix.lower() in (".parquet", ".pq") else ".csv"
    written.insert(0, write_table(output / f"attributions{suffix}", records))
    print(
        f"{len(result.rows)} rows of {result.rows.source} explained by {', '.join(methods)}; "
        f"wrote {', '.join(path.name for path in written)} to {output}/"
    )
    return 0
