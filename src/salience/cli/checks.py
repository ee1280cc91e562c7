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
    """``salience compare``: several methods' maps side by side, and how much they agree."""
    from salience import viz
    from salience.api import explain_all, make_explainer, method_options
    from salience.evaluation.agreement import agreement
    from salience.postprocess import to_display

    methods = method_names(args.method)
    if len(methods) < 2:
        raise InvalidInputError(
            f"compare needs at least 2 methods, got {', '.join(methods) or 'none'}"
        )
    loaded = open_model_from_args(args)
    target = checked_target(args.target, loaded)
    values = method_values(args)
    explainers = [make_explainer(loaded.adapter, m, **method_options(m, values)) for m in methods]
    output = Path(args.output)
    for item in image_inputs(args.images):
        image = prepared_image(loaded, item)
        with about_image(item.label):
            found = explain_all(
                loaded.adapter,
                image.tensor,
                explainers,
                target=target,
                score=args.score,
                class_names=loaded.class_names,
            )
        maps = {name: e.map(0, 0) for name, e in found.items()}
        result = agreement(maps, top_fraction=args.top / 100.0)
        first = next(iter(found.values()))
        index = int(first.targets[0, 0])
        title = loaded.class_names[index] if index >= 0 else "custom target"
        shown = [
            image.geometry.to_original(to_display(m, size=result.size).numpy())
            for m in maps.values()
        ]
        written = [
            viz.save_grid(
                output / f"{item.label}_compare.png",
                [image.original],
                [shown],
                row_titles=[title],
                column_titles=list(maps),
                cmap=args.cmap,
                alpha=args.alpha,
            ),
            *result.save(output, name=f"{item.label}_agreement"),
        ]
        _print_agreement(item.label, title, result)
        print(f"wrote {', '.join(path.name for path in written)} to {output}/")
    return 0


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
