"""``salience sanity``, ``evaluate`` and ``compare``: how far the maps can be trusted."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from salience.cli.arguments import (
    checked_target,
    image_inputs,
    method_names,
    method_values,
    open_model_from_args,
    prepared_image,
)
from salience.cli.reporting import about_image
from salience.errors import InvalidInputError

SANITY_METHODS = "gradient,gradient_x_input,guided_backprop,integrated_gradients,smoothgrad,gradcam"


COMPARE_METHODS = "gradient,smoothgrad,integrated_gradients,gradcam,rise"


EVALUATE_METHODS = "gradient,gradcam,rise"


def run_evaluate(args: argparse.Namespace) -> int:
    """``salience evaluate``: deletion and insertion AUC per method, with a random baseline."""
    import torch

    from salience.evaluation.faithfulness import evaluate_methods

    methods = method_names(args.method)
    loaded = open_model_from_args(args)
    target = checked_target(args.target, loaded)
    inputs = image_inputs(args.images)
    x = torch.cat([prepared_image(loaded, item).tensor for item in inputs])
    report = evaluate_methods(
        loaded.adapter,
        x,
        methods,
        labels=[item.label for item in inputs],
        target=target,
        score=args.score,
        class_names=loaded.class_names,
        pixels_per_step=args.step,
        **method_values(args),  # with seed (also the random baseline's) and progress
    )
    print(f"faithfulness of {loaded.name} on {len(inputs)} image(s), {args.score} of the class:")
    print(report.format_table())
    output = Path(args.output)
    written = report.save(output, model=loaded.name)
    print(f"wrote {', '.join(path.name for path in written)} to {output}/")
    return 0


def run_sanity(args: argparse.Namespace) -> int:
    """``salience sanity``: model-parameter (or, with ``--data``, data) randomization test."""
    import torch

    methods = method_names(args.method)
    values = method_values(args)
    output = Path(args.output)
    if args.data:
        return _run_data_randomization(args, methods, values, output)
    loaded = open_model_from_args(args)
    checked_target(args.target, loaded)
    x = torch.cat([prepared_image(loaded, item).tensor for item in image_inputs(args.images)])
    layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
    modes = ("cascading", "independent") if args.mode == "both" else (args.mode,)
    from salience.evaluation.randomization import sanity_check

    for mode in modes:
        result = sanity_check(
            loaded.adapter,
            x,
            methods,
            mode=mode,
            layers=layers,
            target=args.target,
            score=args.score,
            class_names=loaded.class_names,
            threshold=args.threshold,
            **values,
        )
        _print_sanity(result, loaded.name, len(x))
        written = result.save(output)
        print(f"wrote {', '.join(path.name for path in written)} to {output}/")
    return 0


def _print_sanity(result: Any, model: str, images: int) -> None:
    """The sanity table: similarity after the top block, half the blocks, all; the verdicts."""
    means = result.mean("spearman_abs")
    steps = len(result.steps)
    half = (steps - 1) // 2
    print(
        f"{result.mode} randomization of {model}: {steps} blocks, {images} image(s); "
        "rank correlation of the absolute maps with the trained model's"
    )
    first, middle = f"{result.steps[0]}", f"{result.steps[half]}"
    print(f"  {'method':<22} {first:>12} {middle:>12} {result.steps[-1]:>12}  verdict")
    verdicts = result.verdicts()
    for m, method in enumerate(result.methods):
        verdict = verdicts[method]
        print(
            f"  {method:<22} {means[m, 0]:>12.2f} {means[m, half]:>12.2f} {means[m, -1]:>12.2f}"
            f"  {verdict.text}"
        )


def _run_data_randomization(
    args: argparse.Namespace, methods: list[str], values: dict[str, Any], output: Path
) -> int:
    from salience.evaluation.data_randomization import data_randomization_test

    if args.images or args.model != "efficientnet_lite0" or args.layers:
        raise InvalidInputError(
            "--data trains its own models on the digits: drop IMAGE, --model, --layers"
        )
    result = data_randomization_test(methods, progress=values.pop("progress"), **values)
    print("data randomization on the 8×8 digits (maps of held-out digits, their true class):")
    for trained in result.models:
        print(
            f"  {trained.labeling} labels: {trained.epochs} epochs, training accuracy "
            f"{trained.train_accuracy:.1%}, test accuracy {trained.test_accuracy:.1%}"
        )
    print(result.format_table())
    written = result.save(output)
    print(f"wrote {', '.join(path.name for path in written)} to {output}/")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``salience compare``: several methods' maps side by side, and how much they agree; over
    several images (or folders of them), how often they agree."""
    import torch

    from salience import viz
    from salience.api import explain_all, make_explainer, method_options
    from salience.evaluation.agreement import agreement, agreement_summary
    from salience.postprocess import to_display

    methods = method_names(args.method)
    if len(methods) < 2:
        raise InvalidInputError(
            f"compare needs at least 2 methods, got {', '.join(methods) or 'none'}"
        )
    inputs = image_inputs(compared_images(args.images))
    loaded = open_model_from_args(args)
    target = checked_target(args.target, loaded)
    values = method_values(args)
    explainers = [make_explainer(loaded.adapter, m, **method_options(m, values)) for m in methods]
    output = Path(args.output)
    names = loaded.class_names
    labels, results = [], []
    for item in inputs:
        image = prepared_image(loaded, item)
        with about_image(item.label):
            found = explain_all(
                loaded.adapter,
                image.tensor,
                explainers,
                target=target,
                score=args.score,
                class_names=names,
            )
            probabilities = torch.softmax(loaded.adapter.forward(image.tensor), dim=1)[0]
        maps = {name: e.map(0, 0) for name, e in found.items()}
        result = agreement(maps, top_fraction=args.top / 100.0)
        first = next(iter(found.values()))
        index = int(first.targets[0, 0])
        predicted = int(probabilities.argmax())
        title = names[index] if index >= 0 else "custom target"
        row_title = f"{title} {float(probabilities[index]):.2f}" if index >= 0 else title
        if predicted != index:  # the explained class is not the prediction: say both
            row_title += f" (predicted {names[predicted]} {float(probabilities[predicted]):.2f})"
        shown = [
            image.geometry.to_original(to_display(m, size=result.size).numpy())
            for m in maps.values()
        ]
        written = [
            viz.save_grid(
                output / f"{item.label}_compare.png",
                [image.original],
                [shown],
                row_titles=[row_title],
                column_titles=_agreement_titles(result),
                cmap=args.cmap,
                alpha=args.alpha,
            ),
            *result.save(output, name=f"{item.label}_agreement"),
        ]
        _print_agreement(item.label, title, result)
        print(f"wrote {', '.join(path.name for path in written)} to {output}/")
        labels.append(item.label)
        results.append(result)
    if len(results) > 1:
        summary = agreement_summary(labels, results)
        _print_summary(summary)
        written = summary.save(output)
        print(f"wrote {', '.join(path.name for path in written)} to {output}/")
    return 0


def compared_images(names: list[str]) -> list[str]:
    """The images named: files, bundled photos, and the images of each folder (recursively)."""
    from salience.runner.inputs import collect_inputs

    found: list[str] = []
    for name in names:
        if Path(name).is_dir():
            found += [item.path for item in collect_inputs(name)]
        else:
            found.append(name)
    return found


def _agreement_titles(result: Any) -> list[str]:
    """The methods' column titles; each after the first with its agreement with the first."""
    titles = [result.methods[0]]
    for j in range(1, len(result.methods)):
        titles.append(
            f"{result.methods[j]}\nρ {result.spearman[0, j]:.2f} · "
            f"IoU {result.iou[0, j]:.2f} vs {result.methods[0][:12]}"
        )
    return titles


def _print_summary(summary: Any) -> None:
    from salience.evaluation.agreement import AGREE_AT, DISAGREE_BELOW
    from salience.evaluation.report import Column, format_rows

    print(
        f"agreement over {len(summary.results)} images: Spearman rank correlation and "
        f"top-{summary.top_fraction:.0%} IoU per pair; agree: ρ >= {AGREE_AT}, "
        f"disagree: ρ < {DISAGREE_BELOW}"
    )
    columns = [
        Column("a", "method"),
        Column("b", "vs"),
        Column("spearman_mean", "ρ mean", ".2f"),
        Column("spearman_min", "ρ min", ".2f"),
        Column("spearman_max", "ρ max", ".2f"),
        Column("iou_mean", "IoU mean", ".2f"),
        Column("agree", "agree", ".0%"),
        Column("disagree", "disagree", ".0%"),
    ]
    print(format_rows(summary.rows(), columns, indent="  ", gap="  "))


def _print_agreement(label: str, title: str, result: Any) -> None:
    width = max(len(m) for m in result.methods)
    print(
        f"{label} ({title}): Spearman rank correlation above the diagonal, "
        f"top-{result.top_fraction:.0%} IoU below"
    )
    print("  " + " " * width + " ".join(f"{m[:10]:>10}" for m in result.methods))
    for i, method in enumerate(result.methods):
        cells = []
        for j in range(len(result.methods)):
            value = result.spearman[i, j] if j > i else result.iou[i, j] if j < i else None
            cells.append(f"{'—':>10}" if value is None else f"{value:>10.2f}")
        print(f"  {method:<{width}}" + " ".join(cells))
