"""The ``salience`` command: explain images with the bundled model, list models and methods."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from salience.adapters.torch import TorchAdapter
    from salience.explanation import Explanation
    from salience.images import PreparedImage
    from salience.loading import LoadedModel

# Read by PyTorch when it starts; doubles no-grad batched throughput on small CPUs.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

DEFAULT_METHODS = "gradient,guided_backprop,smoothgrad,integrated_gradients"
PROGRESS_THRESHOLD = 3


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``salience``."""
    parser = argparse.ArgumentParser(
        prog="salience", description="Saliency maps: what in this input made the model decide?"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser(
        "explain",
        help="explain images with a bundled model or an ONNX file",
        description="Print the top-5 predictions and write overlays, a grid and raw maps.",
    )
    explain.add_argument(
        "images", nargs="*", metavar="IMAGE",
        help="image files, or names of bundled photos (chelsea, coffee, rocket, astronaut); "
        "default: chelsea",
    )  # fmt: skip
    explain.add_argument(
        "--method", default=DEFAULT_METHODS,
        help=f"comma-separated methods (salience methods lists them); default {DEFAULT_METHODS}",
    )  # fmt: skip
    explain.add_argument(
        "--target", default="predicted",
        help="predicted | class INDEX | class NAME | top-K (default: predicted)",
    )  # fmt: skip
    explain.add_argument("--score", choices=("logit", "probability"), default="logit")
    explain.add_argument("--samples", type=int, default=50, help="SmoothGrad/VarGrad samples")
    explain.add_argument("--noise", type=float, default=0.15, help="SmoothGrad σ / input range")
    explain.add_argument("--steps", type=int, default=50, help="Integrated Gradients steps")
    explain.add_argument(
        "--baseline", default="zeros", help="IG and occlusion baseline: zeros | mean | blur"
    )
    explain.add_argument("--window", type=int, default=16, help="occlusion window (pixels)")
    explain.add_argument("--stride", type=int, default=8, help="occlusion stride (pixels)")
    explain.add_argument("--masks", type=int, default=4000, help="RISE masks")
    explain.add_argument(
        "--layer", default="auto",
        help="CAM layer name (salience layers MODEL lists them); default: the last feature map",
    )  # fmt: skip
    explain.add_argument(
        "--keep-negative", action="store_true", help="CAMs: no ReLU, keep negative evidence"
    )
    explain.add_argument("--seed", type=int, default=0, help="seed of random methods")
    explain.add_argument("--reduce", default="abs_max", help="channel reduction for display")
    explain.add_argument(
        "--percentile", type=float, default=99.0, help="clip display maps at this percentile"
    )
    explain.add_argument("--smooth", type=float, default=0.0, help="Gaussian σ (pixels)")
    explain.add_argument("--cmap", default="jet", help="colormap (jet, viridis, inferno, ...)")
    explain.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    explain.add_argument("-o", "--output", default="salience-out", help="output folder")
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(explain)
    explain.set_defaults(handler=run_explain)

    layers = commands.add_parser(
        "layers",
        help="list a model's layers with their output shapes (CAM candidates)",
        description="Every module the model runs on one input, with its output shape; the "
        "layer CAMs use by default is marked.",
    )
    layers.add_argument("model", nargs="?", default="efficientnet_lite0", help="a bundled model")
    layers.add_argument("--all", action="store_true", help="also layers without a spatial output")
    layers.set_defaults(handler=run_layers)

    models = commands.add_parser("models", help="list the bundled models")
    models.set_defaults(handler=run_models)
    methods = commands.add_parser(
        "methods",
        help="list the saliency methods",
        description="Each method with what it needs (white-box: gradients or layer activations; "
        "black-box: the model's outputs only), a one-line description and its paper.",
    )
    methods.set_defaults(handler=run_methods)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and the flags that describe a model file's input."""
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="a bundled model, or an .onnx file"
    )
    onnx = parser.add_argument_group(
        "ONNX models",
        "a --model FILE.onnx runs black-box methods only; these override its metadata",
    )
    onnx.add_argument(
        "--input-name", metavar="NAME", help="the image input of a model with several inputs"
    )
    onnx.add_argument(
        "--layout", choices=("nchw", "nhwc"), help="the input's layout (default: from its shape)"
    )
    onnx.add_argument(
        "--size", type=int, metavar="N", help="resize the shorter side to N, centre-crop N×N"
    )
    onnx.add_argument(
        "--mean", metavar="R,G,B", help="normalization mean R,G,B (default: ImageNet's)"
    )
    onnx.add_argument(
        "--std", metavar="R,G,B", help="normalization std R,G,B (default: ImageNet's)"
    )
    onnx.add_argument("--classes", metavar="FILE", help="class names, one per line")


def open_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model named by ``--model`` and its input flags."""
    from salience.loading import LoadOptions, is_onnx, open_model

    options = LoadOptions(
        input_name=args.input_name, layout=args.layout, size=args.size,
        mean=_triple("--mean", args.mean), std=_triple("--std", args.std), classes=args.classes,
    )  # fmt: skip
    if not is_onnx(args.model) and (given := options.given()):
        flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
        raise ValueError(f"{flags} apply to .onnx models only, not to {args.model}")
    return open_model(args.model, options)


@dataclass(frozen=True)
class _Input:
    label: str
    source: Any


def _inputs(names: Sequence[str]) -> list[_Input]:
    from salience.zoo import DEFAULT_SAMPLE, SAMPLE_IMAGES

    inputs: list[_Input] = []
    for name in names or [DEFAULT_SAMPLE]:
        if not Path(name).exists() and name in SAMPLE_IMAGES:
            inputs.append(_Input(name, SAMPLE_IMAGES[name]()))
        else:
            inputs.append(_Input(Path(name).stem or "image", name))
    labels = [item.label for item in inputs]
    return [
        _Input(f"{item.label}-{i}" if labels.count(item.label) > 1 else item.label, item.source)
        for i, item in enumerate(inputs)
    ]


def method_names(text: str) -> list[str]:
    """Methods named on the command line: comma-separated, ``cams`` for every CAM."""
    from salience.methods.base import EXPLAINER
    from salience.methods.cam import CAMExplainer
    from salience.registry import available, get

    names: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if name == "cams":
            names += [
                method
                for method in available(EXPLAINER, sort=False)
                if issubclass(get(EXPLAINER, method), CAMExplainer)
            ]
        elif name:
            get(EXPLAINER, name)  # unknown names fail before any work
            names.append(name)
    return list(dict.fromkeys(names))


def run_explain(args: argparse.Namespace) -> int:
    """``salience explain``."""
    import torch
    from tqdm.auto import tqdm

    from salience import viz
    from salience.api import explain_all, make_explainer, method_options
    from salience.targets import parse_target

    loaded = open_model_from_args(args)
    adapter, model_name, names = loaded.adapter, loaded.name, loaded.class_names
    methods = method_names(args.method)
    target = parse_target(args.target, names)
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    viz.colorize(torch.zeros(1, 1).numpy(), args.cmap)  # validates the colormap name early
    prepared = [(item, loaded.preset.prepare(item.source)) for item in _inputs(args.images)]
    output = Path(args.output)
    values = {
        "n_samples": args.samples, "noise": args.noise, "steps": args.steps,
        "baseline": args.baseline, "seed": args.seed, "layer": args.layer,
        "window": args.window, "stride": args.stride, "n_masks": args.masks,
        "relu": not args.keep_negative, "progress": not args.quiet,
    }  # fmt: skip
    explainers = [make_explainer(adapter, m, **method_options(m, values)) for m in methods]

    probabilities = [
        _print_predictions(adapter, item, image, model_name, names) for item, image in prepared
    ]
    sys.stdout.flush()

    grid_images, grid_rows, row_titles = [], [], []
    tasks = len(prepared) * len(explainers)
    bar = tqdm(total=tasks, disable=args.quiet or tasks <= PROGRESS_THRESHOLD, desc="explaining")
    for (item, image), image_probabilities in zip(prepared, probabilities, strict=True):
        bar.set_postfix_str(item.label)
        explanations = explain_all(
            adapter, image.tensor, explainers, target=target, score=args.score, class_names=names
        )
        rows: list[list[Any]] = []
        for name, explanation in explanations.items():
            explanation = explanation.with_names(names, model=model_name)
            maps = _write_outputs(explanation, image, output / f"{item.label}_{name}", args)
            for k, full in enumerate(maps):
                if len(rows) <= k:
                    rows.append([])
                    index = int(explanation.targets[0, k])
                    row_titles.append(f"{names[index]} {float(image_probabilities[index]):.2f}")
                    grid_images.append(image.original)
                rows[k].append(full)
            bar.update()
        grid_rows.extend(rows)
    bar.close()
    grid = viz.save_grid(
        output / "grid.png", grid_images, grid_rows, row_titles=row_titles,
        column_titles=[e.name for e in explainers], cmap=args.cmap, alpha=args.alpha,
    )  # fmt: skip
    print(f"wrote {tasks} explanations and {grid} to {output}/")
    return 0


def _triple(flag: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{flag} takes 3 comma-separated numbers R,G,B, got {text!r}")
    return values


def _print_predictions(
    adapter: TorchAdapter, item: _Input, image: PreparedImage, model_name: str, names: list[str]
) -> Tensor:
    """Print the top-5 classes of one image; return its class probabilities."""
    import torch

    probabilities = torch.softmax(adapter.forward(image.tensor), dim=1)[0]
    top = probabilities.topk(min(5, probabilities.numel()))
    print(f"{item.label}: top-5 predictions of {model_name}")
    for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
        print(f"  {rank + 1}. {names[i]:<28} {p:6.1%}  (class {i})")
    return probabilities


def _write_outputs(
    explanation: Explanation, image: PreparedImage, stem: Path, args: argparse.Namespace
) -> list[np.ndarray]:
    """Save the raw maps and one overlay per target; return the display maps on the photo."""
    from salience import viz
    from salience.postprocess import to_display

    explanation.save(stem)
    count = explanation.targets.shape[1]
    maps = []
    for k in range(count):
        shown = to_display(
            explanation.map(0, k), reduce=args.reduce, percentile=args.percentile,
            smooth=args.smooth,
        )  # fmt: skip
        full = image.geometry.to_original(shown.numpy())
        suffix = f"_top{k + 1}" if count > 1 else ""
        overlay = viz.overlay(image.original, full, alpha=args.alpha, cmap=args.cmap)
        viz.save_png(overlay, stem.with_name(f"{stem.name}{suffix}.png"))
        maps.append(full)
    return maps


def run_models(_args: argparse.Namespace) -> int:
    """``salience models``."""
    from salience.registry import available
    from salience.zoo import MODEL, model_spec

    for name in available(MODEL):
        print(f"{name:<22} {model_spec(name).description}")
    return 0


def run_methods(_args: argparse.Namespace) -> int:
    """``salience methods``: name, one line of description, the paper."""
    from salience.methods.base import EXPLAINER
    from salience.registry import available, get

    for name in available(EXPLAINER):
        method = get(EXPLAINER, name)
        doc = (method.__doc__ or "").strip().splitlines()
        paper = f" [{method.paper}]" if method.paper else ""
        kind = "white-box" if method.needs_gradients else "black-box"
        print(f"{name:<22} {kind:<10} {doc[0] if doc else ''}{paper}")
    return 0


def run_layers(args: argparse.Namespace) -> int:
    """``salience layers``: the model's layers, their output shapes, the default CAM layer."""
    from salience.adapters.layers import LayerError
    from salience.adapters.torch import TorchAdapter
    from salience.zoo import DEFAULT_SAMPLE, SAMPLE_IMAGES, load_model, model_spec

    spec = model_spec(args.model)
    sample = spec.preset.prepare(SAMPLE_IMAGES[DEFAULT_SAMPLE]()).tensor
    adapter = TorchAdapter(load_model(spec.name))
    try:
        default = adapter.resolve_layer(None, sample)
    except LayerError:
        default = None
    shape = "×".join(map(str, sample.shape))
    print(f"layers of {spec.name} on a {shape} input (* = the CAM default):")
    for info in adapter.layer_table(sample):
        if not (args.all or info.spatial or info.name == default):
            continue
        shape = "×".join(map(str, info.shape[1:])) if info.shape is not None else "(not a tensor)"
        calls = f"  (called {info.calls}×)" if info.calls > 1 else ""
        mark = "*" if info.name == default else " "
        print(f"{mark} {info.name:<34} {info.kind:<20} {shape}{calls}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``salience`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from salience.adapters.base import GradientsUnavailableError
    from salience.adapters.torch import ModelOutputError

    try:
        return int(args.handler(args))
    except BrokenPipeError:  # e.g. `salience methods | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (
        ValueError,
        LookupError,
        ModelOutputError,
        GradientsUnavailableError,
        OSError,
        MemoryError,
        ImportError,
    ) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"salience: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
