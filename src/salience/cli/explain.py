"""``salience explain``: predictions, overlays, a grid and raw maps per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salience.cli.arguments import (
    FIGURE_SUFFIX,
    ImageInput,
    checked_target,
    display_from_args,
    image_inputs,
    method_names,
    method_values,
    open_model_from_args,
    prepared_image,
)
from salience.cli.reporting import about_image
from salience.errors import InvalidInputError
from salience.fileio import write_together

if TYPE_CHECKING:
    from salience.explanation import Explanation
    from salience.images import PreparedImage
    from salience.models.options import LoadedModel
    from salience.outputs import Summary
    from salience.render import DisplayOptions, Rendering, View

DEFAULT_METHODS = "gradient,guided_backprop,smoothgrad,integrated_gradients"


PROGRESS_THRESHOLD = 3


def run_explain(args: argparse.Namespace) -> int:
    """``salience explain``: each image's files are written together, once it is explained.

    Scans (NIfTI, 3-D ``.npy``) and signals (CSV, 1-D/2-D ``.npy``) are explained by
    :func:`~salience.cli.explain_data.run_explain_data`.
    """
    from tqdm.auto import tqdm

    from salience.cli.explain_data import inputs_kind, run_explain_data
    from salience.modalities import IMAGE

    if (table := table_input(args.images)) is not None:
        # a CSV is a table of feature rows, unless the model takes (N, C, L) signals
        from salience.cli.rows import ROW_METHODS, TakesSignalsError, run_explain_rows

        method = args.method
        if args.method == DEFAULT_METHODS:
            args.method = ROW_METHODS
        try:
            return run_explain_rows(args, table)
        except TakesSignalsError:
            args.method = method
    kind = inputs_kind(args.images)
    if kind != IMAGE:
        return run_explain_data(args, kind)

    from salience import viz
    from salience.api import explain_all, make_explainer, method_options
    from salience.outputs import explained_text
    from salience.render import method_text

    methods = method_names(args.method)
    items = image_inputs(args.images)
    output, figure = output_place(args.output, len(items), len(methods))
    loaded = open_model_from_args(args)
    adapter, model_name, names = loaded.adapter, loaded.name, loaded.class_names
    target = checked_target(args.target, loaded)
    prepared = [(item, prepared_image(loaded, item)) for item in items]
    values = method_values(args)
    explainers = [make_explainer(adapter, m, **method_options(m, values)) for m in methods]
    display = display_from_args(args)

    summaries = []
    for item, image in prepared:
        with about_image(item.label):
            summaries.append(_print_predictions(loaded, item, image))
    sys.stdout.flush()

    grid_images, grid_rows, row_titles = [], [], []
    column_titles = [e.name for e in explainers]
    tasks = len(prepared) * len(explainers)
    bar = tqdm(total=tasks, disable=args.quiet or tasks <= PROGRESS_THRESHOLD, desc="explaining")
    finished = 0
    try:
        for (item, image), summary in zip(prepared, summaries, strict=True):
            bar.set_postfix_str(item.label)
            with about_image(item.label, finished=finished, output=output):
                explanations = explain_all(
                    adapter,
                    image.tensor,
                    explainers,
                    target=target,
                    score=args.score,
                    class_names=names,
                    output_kind=loaded.output_kind,
                )
                files: dict[str, bytes] = {}
                rows: list[list[Rendering]] = []
                view = display.view(image)
                for name, explanation in explanations.items():
                    _warn_unconverged(bar, item.label, name, explanation.info)
                    explanation = explanation.with_names(names, model=model_name)
                    stem = figure or f"{item.label}_{name}"
                    drawn = _encode_outputs(
                        explanation, view, (item.label, stem), display, summary, names, files
                    )
                    files[f"{stem}.json"] = _sidecar(
                        files[f"{stem}.json"], (item, stem), explanation, summary, display
                    )
                    for k, rendering in enumerate(drawn):
                        if len(rows) <= k:
                            rows.append([])
                        rows[k].append(rendering)
                    bar.update()
                write_together(output, files)
                column_titles = [method_text(e) for e in explanations.values()]
            first = next(iter(explanations.values()))
            for k, row in enumerate(rows):
                row_titles.append(
                    f"{item.label}: {explained_text(summary, int(first.targets[0, k]), names)}"
                )
                grid_images.append(view.image)
                grid_rows.append(row)
            finished += 1
    finally:
        bar.close()
        if grid_rows and figure is None:  # the images explained so far, also after a failure
            grid = viz.save_grid(
                output / "grid.png",
                grid_images,
                [[rendering.values for rendering in row] for row in grid_rows],
                row_titles=row_titles,
                column_titles=column_titles,
                alpha=display.alpha,
                scales=[[rendering.scale for rendering in row] for row in grid_rows],
            )
    if figure is not None:
        print(f"wrote 1 explanation to {args.output}")
    else:
        print(f"wrote {tasks} explanation{'' if tasks == 1 else 's'} and {grid} to {output}/")
    return 0


def output_place(value: str, images: int, methods: int) -> tuple[Path, str | None]:
    """Where ``-o`` puts the files: the folder, and the stem of the one figure's files when
    ``-o`` names a ``.png`` (``cat.png``: ``cat.png``, ``cat.npz``, ``cat.json``), else None.

    Raises
    ------
    InvalidInputError
        For ``-o NAME.png`` with more than one image or method: they make several figures.
    """
    path = Path(value)
    if path.suffix.lower() != FIGURE_SUFFIX or path.is_dir():
        return path, None
    if images * methods != 1:
        raise InvalidInputError(
            f"-o {value} names one figure, but {images} image(s) and {methods} method(s) make "
            f"{images * methods}; give -o a folder (-o {path.with_suffix('')}) or one image and "
            "one method"
        )
    return path.parent, path.stem


def _warn_unconverged(bar: Any, label: str, method: str, info: dict[str, Any]) -> None:
    """Print a warning when a map has not converged (see salience.methods.convergence)."""
    from salience.methods.convergence import convergence_warning

    warning = convergence_warning(method, info)
    if warning is not None:
        bar.write(f"warning: {label}: {warning}", file=sys.stderr)


def _sidecar(
    metadata: bytes,
    written: tuple[ImageInput, str],
    explanation: Explanation,
    summary: Summary,
    display: DisplayOptions,
) -> bytes:
    """The explanation's JSON with what the command knows besides: the image's source, each
    explained class's probability and figure file, and the display settings its overlay was
    drawn with. ``written`` is the image and the stem of its files."""
    import dataclasses
    import json

    item, stem = written
    values = json.loads(metadata)
    named = isinstance(item.source, str | Path)
    values["source"] = str(Path(item.source).resolve()) if named else f"bundled photo {item.label}"
    known = {line.index: line.probability for line in summary.top if line.is_positive}
    values["probability"] = [known.get(k) for k in explanation.targets[0].tolist()]
    count = explanation.targets.shape[1]
    values["figures"] = [f"{stem}{explanation.figure_suffix(k)}.png" for k in range(count)]
    values["display"] = dataclasses.asdict(display)
    return json.dumps(values, indent=2).encode()


def table_input(inputs: list[str]) -> str | None:
    """The table of feature rows among the inputs (``rows.csv``), or None for images.

    Raises
    ------
    InvalidInputError
        When a table comes with other inputs: explain one table at a time.
    """
    from salience.tabular import is_table

    tables = [name for name in inputs if is_table(name)]
    if not tables:
        return None
    if len(inputs) > 1:
        raise InvalidInputError(
            f"explain one table of rows at a time, without images; got {', '.join(inputs)}"
        )
    return tables[0]


def _print_predictions(loaded: LoadedModel, item: ImageInput, image: PreparedImage) -> Summary:
    """Print one image's prediction in its outputs' terms; return it."""
    from salience.outputs import prediction_lines

    summary = loaded.summary(loaded.adapter.forward(image.tensor)[0])
    for line in prediction_lines(summary, item.label, loaded.name):
        print(line)
    return summary


def _encode_outputs(
    explanation: Explanation,
    image: View,
    names: tuple[str, str],
    display: DisplayOptions,
    summary: Summary,
    class_names: list[str],
    files: dict[str, bytes],
) -> list[Rendering]:
    """Add the raw maps and one titled overlay with its colorbar per target to ``files``.

    ``names`` is the image's label and the files' stem; ``summary`` the image's prediction,
    which titles each target's overlay; the renderings are returned.
    """
    from salience.outputs import explained_text
    from salience.render import render, title

    label, stem = names
    files[f"{stem}.npz"], files[f"{stem}.json"] = explanation.to_bytes()
    count = explanation.targets.shape[1]
    drawn = []
    for k in range(count):
        rendering = render(explanation, k, image, display)
        index = int(explanation.targets[0, k])
        prediction = explained_text(summary, index, class_names)
        files[f"{stem}{explanation.figure_suffix(k)}.png"] = rendering.figure_png(
            title(explanation, k, label, prediction=prediction)
        )
        drawn.append(rendering)
    return drawn
