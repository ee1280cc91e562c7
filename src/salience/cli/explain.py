"""``salience explain``: predictions, overlays, a grid and raw maps per image."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salience.cli.arguments import (
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

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from salience.adapters.torch import TorchAdapter
    from salience.explanation import Explanation
    from salience.images import PreparedImage
    from salience.render import DisplayOptions, View

DEFAULT_METHODS = "gradient,guided_backprop,smoothgrad,integrated_gradients"


PROGRESS_THRESHOLD = 3


def run_explain(args: argparse.Namespace) -> int:
    """``salience explain``: each image's files are written together, once it is explained."""
    from tqdm.auto import tqdm

    from salience import viz
    from salience.api import explain_all, make_explainer, method_options

    methods = method_names(args.method)
    loaded = open_model_from_args(args)
    adapter, model_name, names = loaded.adapter, loaded.name, loaded.class_names
    target = checked_target(args.target, loaded)
    prepared = [(item, prepared_image(loaded, item)) for item in image_inputs(args.images)]
    output = Path(args.output)
    values = method_values(args)
    explainers = [make_explainer(adapter, m, **method_options(m, values)) for m in methods]
    display = display_from_args(args)

    probabilities = []
    for item, image in prepared:
        with about_image(item.label):
            probabilities.append(_print_predictions(adapter, item, image, model_name, names))
    sys.stdout.flush()

    grid_images, grid_rows, row_titles = [], [], []
    tasks = len(prepared) * len(explainers)
    bar = tqdm(total=tasks, disable=args.quiet or tasks <= PROGRESS_THRESHOLD, desc="explaining")
    finished = 0
    try:
        for (item, image), image_probabilities in zip(prepared, probabilities, strict=True):
            bar.set_postfix_str(item.label)
            with about_image(item.label, finished=finished, output=output):
                explanations = explain_all(
                    adapter,
                    image.tensor,
                    explainers,
                    target=target,
                    score=args.score,
                    class_names=names,
                )
                files: dict[str, bytes] = {}
                rows: list[list[Any]] = []
                view = display.view(image)
                for name, explanation in explanations.items():
                    _warn_unconverged(bar, item.label, name, explanation.info)
                    explanation = explanation.with_names(names, model=model_name)
                    stem = f"{item.label}_{name}"
                    maps = _encode_outputs(explanation, view, stem, display, files)
                    files[f"{stem}.json"] = _sidecar(
                        files[f"{stem}.json"], item, explanation, image_probabilities, display
                    )
                    for k, full in enumerate(maps):
                        if len(rows) <= k:
                            rows.append([])
                        rows[k].append(full)
                    bar.update()
                write_together(output, files)
            first = next(iter(explanations.values()))
            for k, row in enumerate(rows):
                index = int(first.targets[0, k])
                row_titles.append(f"{names[index]} {float(image_probabilities[index]):.2f}")
                grid_images.append(view.image)
                grid_rows.append(row)
            finished += 1
    finally:
        bar.close()
        if grid_rows:  # the images explained so far, also when a later one failed
            grid = viz.save_grid(
                output / "grid.png",
                grid_images,
                grid_rows,
                row_titles=row_titles,
                column_titles=[e.name for e in explainers],
                cmap=args.cmap,
                alpha=args.alpha,
            )
    print(f"wrote {tasks} explanation{'' if tasks == 1 else 's'} and {grid} to {output}/")
    return 0


def _warn_unconverged(bar: Any, label: str, method: str, info: dict[str, Any]) -> None:
    """Print a warning when a map has not converged (see salience.methods.convergence)."""
    from salience.methods.convergence import convergence_warning

    warning = convergence_warning(method, info)
    if warning is not None:
        bar.write(f"warning: {label}: {warning}", file=sys.stderr)


def _sidecar(
    metadata: bytes,
    item: ImageInput,
    explanation: Explanation,
    probabilities: Tensor,
    display: DisplayOptions,
) -> bytes:
    """The explanation's JSON with what the command knows besides: the image's source, each
    explained class's probability, and the display settings its overlay was drawn with."""
    import dataclasses
    import json

    values = json.loads(metadata)
    named = isinstance(item.source, str | Path)
    values["source"] = str(Path(item.source).resolve()) if named else f"bundled photo {item.label}"
    classes = explanation.targets[0].tolist()
    values["probability"] = [
        float(probabilities[k]) if 0 <= k < len(probabilities) else None for k in classes
    ]
    values["display"] = dataclasses.asdict(display)
    return json.dumps(values, indent=2).encode()


def write_together(folder: Path, files: dict[str, bytes]) -> None:
    """Write files into ``folder`` so that they appear together or not at all.

    Each is written to a temporary file beside its place first; only when all are written are
    they renamed into place (:func:`salience.fileio.atomic_path`), and an error removes them all.
    """
    from salience.fileio import atomic_path

    with ExitStack() as stack:
        for name, data in files.items():
            stack.enter_context(atomic_path(folder / name)).write_bytes(data)


def _print_predictions(
    adapter: TorchAdapter, item: ImageInput, image: PreparedImage, model_name: str, names: list[str]
) -> Tensor:
    """Print the top-5 classes of one image; return its class probabilities."""
    import torch

    probabilities = torch.softmax(adapter.forward(image.tensor), dim=1)[0]
    top = probabilities.topk(min(5, probabilities.numel()))
    print(f"{item.label}: top-5 predictions of {model_name}")
    for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
        print(f"  {rank + 1}. {names[i]:<28} {p:6.1%}  (class {i})")
    return probabilities


def _encode_outputs(
    explanation: Explanation,
    image: View,
    stem: str,
    display: DisplayOptions,
    files: dict[str, bytes],
) -> list[np.ndarray]:
    """Add the raw maps and one overlay per target to ``files``; return the display maps."""
    from salience.render import render

    files[f"{stem}.npz"], files[f"{stem}.json"] = explanation.to_bytes()
    count = explanation.targets.shape[1]
    maps = []
    for k in range(count):
        rendering = render(explanation, k, image, display)
        suffix = f"_top{k + 1}" if count > 1 else ""
        files[f"{stem}{suffix}.png"] = rendering.png
        maps.append(rendering.shown)
    return maps
