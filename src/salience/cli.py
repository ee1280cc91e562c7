"""The ``salience`` command: explain images with the bundled model, list models and methods."""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from salience.errors import InvalidInputError, MissingFileError, MissingPackageError, SalienceError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from salience.adapters.torch import TorchAdapter
    from salience.explanation import Explanation
    from salience.images import PreparedImage
    from salience.loading import LoadedModel, LoadOptions
    from salience.methods.options import Option
    from salience.render import DisplayOptions, View
    from salience.targets import TargetSpec

# Read by PyTorch when it starts; doubles no-grad batched throughput on small CPUs.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

DEFAULT_METHODS = "gradient,guided_backprop,smoothgrad,integrated_gradients"
SANITY_METHODS = "gradient,gradient_x_input,guided_backprop,integrated_gradients,smoothgrad,gradcam"
COMPARE_METHODS = "gradient,smoothgrad,integrated_gradients,gradcam,rise"
EVALUATE_METHODS = "gradient,gradcam,rise"
PROGRESS_THRESHOLD = 3
DEBUG_VARIABLE = "SALIENCE_DEBUG"
DEBUG_HELP = f"show the traceback of every error (also {DEBUG_VARIABLE}=1)"


class CommandError(SalienceError):
    """An image or model failed for a reason of the user's, reported in one line."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line; the usage is one ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"salience: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``salience``.

    Every option's value is checked here (its range, its choices, that ``-o`` can be a folder),
    so a bad one is refused in one line before any model opens.

    Parameters
    ----------
    command : str, optional
        Give the methods' options (generated from the registered methods, which imports torch)
        to this command only; None gives them to every command that takes them, ``""`` to none
        (``salience --help`` then starts without torch).
    """

    def with_methods(parser: argparse.ArgumentParser, name: str) -> None:
        if command is None or command == name:
            add_method_arguments(parser)

    parser = _Parser(
        prog="salience", description="Saliency maps: what in this input made the model decide?"
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser(
        "explain",
        help="explain images with a bundled model or an ONNX file",
        description="Print the top-5 predictions and write overlays, a grid and raw maps.",
    )
    _add_images_argument(explain)
    explain.add_argument(
        "--method", default=DEFAULT_METHODS,
        help=f"comma-separated methods (salience methods lists them); default {DEFAULT_METHODS}",
    )  # fmt: skip
    with_methods(explain, "explain")
    _add_display_arguments(explain)
    _add_overlay_arguments(explain)
    _add_output_arguments(explain)
    add_model_arguments(explain)
    explain.set_defaults(handler=run_explain)

    layers = commands.add_parser(
        "layers",
        help="list a model's layers with their output shapes (CAM candidates)",
        description="Every module the model runs on one input, with its output shape; the "
        "layer CAMs use by default is marked.",
    )
    layers.add_argument("model", nargs="?", default="efficientnet_lite0", help=MODEL_HELP)
    layers.add_argument("--all", action="store_true", help="also layers without a spatial output")
    add_model_file_arguments(layers)
    layers.set_defaults(handler=run_layers)

    evaluate = commands.add_parser(
        "evaluate",
        help="faithfulness of methods: deletion and insertion AUC (RISE), with a random baseline",
        description="Explain each image with each method, delete the most salient pixels first "
        "(to zeros) and insert them first (into a blurred copy), and print the area under each "
        "score curve: deletion lower is better, insertion higher. The maps explain and the "
        "curves measure the --score of the explained class (default: probability, as RISE). "
        "Writes faithfulness.csv, .json and .png.",
    )
    _add_images_argument(evaluate)
    evaluate.add_argument(
        "--method", default=EVALUATE_METHODS,
        help=f"comma-separated methods (salience methods lists them); default {EVALUATE_METHODS}",
    )  # fmt: skip
    with_methods(evaluate, "evaluate")
    evaluate.set_defaults(score="probability")
    evaluate.add_argument(
        "--step",
        type=_at_least(1),
        metavar="N",
        help="pixels changed per step (default: image width)",
    )
    _add_output_arguments(evaluate)
    add_model_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    sanity = commands.add_parser(
        "sanity",
        help="sanity checks: do the maps change when the model's weights are randomized?",
        description="The model-parameter randomization test of Adebayo et al. (2018): "
        "re-initialize the model block by block from the top (cascading: cumulatively; "
        "independent: one block at a time) and compare each method's maps with its maps on the "
        "trained model (Spearman of absolute and signed maps, SSIM, HOG). With --data, the data "
        "randomization test instead: a small CNN trained on scikit-learn's digits with true and "
        "with permuted labels. Writes figures, CSV and JSON.",
    )
    _add_images_argument(sanity)
    sanity.add_argument(
        "--method", default=SANITY_METHODS,
        help=f"comma-separated methods; default {SANITY_METHODS}",
    )  # fmt: skip
    sanity.add_argument(
        "--mode", choices=("cascading", "independent", "both"), default="cascading",
        help="how the blocks are randomized (default: cascading)",
    )  # fmt: skip
    sanity.add_argument(
        "--layers", metavar="A,B,...",
        help="the blocks to randomize, top first (default: every block with weights)",
    )  # fmt: skip
    sanity.add_argument(
        "--threshold", type=_number, default=0.5,
        help="verdict threshold on the mean rank correlation of the absolute maps (default 0.5)",
    )  # fmt: skip
    sanity.add_argument(
        "--data", action="store_true",
        help="run the data randomization test on the digits instead (no images, no --model)",
    )  # fmt: skip
    with_methods(sanity, "sanity")
    _add_output_arguments(sanity)
    add_model_arguments(sanity)
    sanity.set_defaults(handler=run_sanity)

    compare = commands.add_parser(
        "compare",
        help="agreement between methods: maps side by side and pairwise similarity",
        description="Explain each image with several methods; write the maps side by side "
        "(IMAGE_compare.png) and the pairwise agreement matrix (Spearman rank correlation and "
        "intersection over union of the top pixels) as a figure and JSON.",
    )
    _add_images_argument(compare)
    compare.add_argument(
        "--method", default=COMPARE_METHODS,
        help=f"comma-separated methods, at least 2 (or cams); default {COMPARE_METHODS}",
    )  # fmt: skip
    compare.add_argument(
        "--top", type=_percent, default=10.0, metavar="PERCENT",
        help="the top percent of pixels whose overlap is measured (default 10)",
    )  # fmt: skip
    with_methods(compare, "compare")
    _add_overlay_arguments(compare)
    _add_output_arguments(compare)
    add_model_arguments(compare)
    compare.set_defaults(handler=run_compare)

    serve = commands.add_parser(
        "serve",
        help="the web viewer and HTTP API: explain images in the browser",
        description="Serve a page where you drop an image, choose methods and see the maps side "
        "by side, and the same service as an HTTP API (docs at /docs). Needs "
        "pip install 'salience[server]'.",
    )
    serve.add_argument(
        "--model", action="append", metavar="MODEL",
        help="a model to serve (repeat, or separate with commas); default efficientnet_lite0",
    )  # fmt: skip
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="threads computing maps (default: the cores)")
    serve.add_argument(
        "--time-limit", type=float, default=120.0, help="seconds one request may compute"
    )
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (MB)")
    serve.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest image (width × height)"
    )
    serve.add_argument(
        "--max-pending-mb",
        type=float,
        default=2048.0,
        help="memory the decoded images of the requests waiting or computing may take (MB); "
        "more are refused as busy (default 2048)",
    )
    serve.set_defaults(handler=run_serve)

    batch = commands.add_parser(
        "batch",
        help="explain a folder or data set: maps, overlays, a results table, an index page",
        description="Explain every image of INPUT (a folder, a glob pattern, or a CSV/Parquet "
        "manifest with a path column and an optional label column) into OUT: per image its "
        "maps (.npz + .json), overlays and thumbnails (PNG), and results.csv / results.parquet "
        "and index.html. Resumable: a re-run skips the images finished under the same settings "
        "and redoes the rest. Exits 1 when an image failed (its error is in the table).",
    )
    batch.add_argument("input", metavar="INPUT", help="folder, glob pattern, or .csv/.parquet")
    batch.add_argument(
        "--method", default="gradient",
        help="comma-separated methods (salience methods lists them); default gradient",
    )  # fmt: skip
    with_methods(batch, "batch")
    batch.add_argument(
        "--auc", action="store_true",
        help="also deletion and insertion AUC per method (probability of the explained class)",
    )  # fmt: skip
    batch.add_argument(
        "--step",
        type=_at_least(1),
        metavar="N",
        help="AUC: pixels per step (default: the image width)",
    )
    _add_display_arguments(batch)
    _add_overlay_arguments(batch)
    batch.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="local: worker processes on this machine; ray: a Ray cluster (salience[ray])",
    )  # fmt: skip
    batch.add_argument(
        "--workers", type=_at_least(1), help="worker processes / Ray actors (default: one per core)"
    )
    batch.add_argument(
        "--ray-address", metavar="ADDRESS", help="the Ray cluster (default: RAY_ADDRESS or local)"
    )
    batch.add_argument(
        "--chunk-size",
        type=_at_least(1),
        metavar="N",
        help="ray: images per actor call (default 4)",
    )
    _add_output_arguments(batch)
    add_model_arguments(batch)
    batch.set_defaults(handler=run_batch)

    models = commands.add_parser("models", help="list the bundled models")
    models.set_defaults(handler=run_models)
    methods = commands.add_parser(
        "methods",
        help="list the saliency methods",
        description="Each method with what it needs (white-box: gradients or layer activations; "
        "black-box: the model's outputs only), a one-line description and its paper.",
    )
    methods.set_defaults(handler=run_methods)
    for command in commands.choices.values():  # also after the command: salience explain --debug
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


def _option_type(name: str, check: Callable[[Any], Any], convert: Callable[[str], Any]) -> Any:
    """An argparse ``type``: ``convert`` the text, then ``check`` the value (a ValueError says
    what is wrong; argparse names the option)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except (ValueError, ArithmeticError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        try:
            check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    parse.__name__ = name
    return parse


def _finite(value: float) -> None:
    if not math.isfinite(value):
        raise InvalidInputError(f"must be a finite number, got {value}")


def _number(text: str) -> float:
    return _option_type("a number", _finite, float)(text)


def _at_least(low: int) -> Callable[[str], int]:
    def check(value: int) -> None:
        if value < low:
            raise InvalidInputError(f"must be an integer >= {low}, got {value}")

    return _option_type("an integer", check, int)


def _fraction(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"must be in [0, 1], got {value}")


def _percent(text: str) -> float:
    def check(value: float) -> None:
        if not 0.0 < value <= 100.0:
            raise InvalidInputError(f"must be a percentage in (0, 100], got {value}")

    return _option_type("a number", check, float)(text)


def _display_check(name: str) -> Callable[[Any], None]:
    """The check of :mod:`salience.postprocess` for one display option (imported when used)."""

    def check(value: Any) -> None:
        from salience import postprocess

        getattr(postprocess, name)(value)

    return check


def _target(text: str) -> str:
    def check(value: str) -> None:
        from salience.targets import check_target_text

        check_target_text(value)

    return _option_type("a target", check, str)(text)


def _output_folder(text: str) -> str:
    """``-o``: a folder, or a path where one can be made (no existing file on the way)."""

    def check(value: str) -> None:
        path = Path(value)
        for place in (path, *path.parents):
            if place.exists():
                if not place.is_dir():
                    what = "" if place == path else f" (in {value})"
                    raise InvalidInputError(f"{place}{what} is a file, not a folder; name a folder")
                return

    return _option_type("a folder", check, str)(text)


def _scale_number(text: str) -> float:
    """A number, or a fraction such as ``1/255``."""
    numerator, slash, denominator = text.partition("/")
    return float(numerator) / float(denominator) if slash else float(text)


def _positive_scale(value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise InvalidInputError(f"must be a positive finite number, got {value}")


def _add_display_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reduce",
        default="abs_max",
        type=_option_type("a reduction", _display_check("check_reduction"), str),
        help="channel reduction for display: abs_max (default), abs_sum, l2, sum, max",
    )
    parser.add_argument(
        "--percentile",
        default=99.0,
        type=_option_type("a number", _display_check("check_percentile"), float),
        help="clip display maps at this percentile, in (0, 100]",
    )
    parser.add_argument(
        "--smooth",
        default=0.0,
        type=_option_type("a number", _display_check("check_sigma"), float),
        help="Gaussian σ (pixels, >= 0)",
    )
    parser.add_argument(
        "--view-size",
        type=_option_type("an int", _at_least(1), int),
        metavar="PIXELS",
        help="draw the overlays on the photo shrunk to this longest side (default: its own size)",
    )


def display_from_args(args: argparse.Namespace) -> DisplayOptions:
    """The ``--reduce``, ``--percentile``, ``--smooth``, ``--view-size``, ``--cmap`` and
    ``--alpha`` flags as :class:`~salience.render.DisplayOptions`."""
    from salience.render import DisplayOptions

    return DisplayOptions(
        reduce=args.reduce,
        percentile=args.percentile,
        smooth=args.smooth,
        cmap=args.cmap,
        alpha=args.alpha,
        view_size=args.view_size,
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", default="salience-out", type=_output_folder, help="output folder"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_overlay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cmap", default="jet", help="colormap (jet, viridis, inferno, ...)")
    parser.add_argument(
        "--alpha",
        type=_option_type("a number", _fraction, float),
        default=0.5,
        help="overlay opacity in [0, 1]",
    )


def _add_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE",
        help="image files, or names of bundled photos (chelsea, coffee, rocket, astronaut); "
        "default: chelsea",
    )  # fmt: skip


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--score`` and the methods' options (samples, steps, layer, seed, ...)."""
    parser.add_argument(
        "--target", default="predicted", type=_target,
        help="predicted | class INDEX (from 0) | class NAME | top-K (default: predicted)",
    )  # fmt: skip
    parser.add_argument("--score", choices=("logit", "probability"), default="logit")
    from salience.methods import flagged_options

    for option, methods in flagged_options():
        parser.add_argument(f"--{option.flag}", **_flag_settings(option, methods))


def _flag_settings(option: Option, methods: Sequence[str]) -> dict[str, Any]:
    """``add_argument``'s settings for a method option (:class:`~salience.methods.options.Option`):
    its type and bounds checked by the option itself, its help with the methods that take it."""
    text = f"{option.help} ({', '.join(methods)})".replace("%", "%%")
    if option.kind is bool:  # a switch to the opposite of the default
        return {"action": "store_true", "help": text}
    if option.choices:
        return {"default": option.default, "choices": option.choices, "help": text}
    if option.kind in (int, float):

        def check(value: Any) -> None:
            problem = option.problem(value)
            if problem is not None:
                raise InvalidInputError(problem)

        kind = "an integer" if option.kind is int else "a number"
        convert = _option_type(kind, check, option.kind)
        return {"default": option.default, "type": convert, "help": text}
    return {"default": option.default, "help": text}


def method_values(args: argparse.Namespace) -> dict[str, Any]:
    """The methods' options from :func:`add_method_arguments`'s flags (for ``method_options``).

    ``progress`` is on unless the command has a ``--quiet`` flag that is set.
    """
    from salience.methods import flagged_options

    values = {}
    for option, _ in flagged_options():
        given = getattr(args, option.flag.replace("-", "_"))
        values[option.name] = (
            (not option.default if given else option.default) if option.kind is bool else given
        )
    return {**values, "progress": not getattr(args, "quiet", False)}


MODEL_HELP = (
    "a bundled model (salience models), package.module:function, or a model file: .pt "
    "(TorchScript), .pt2 (torch.export), .pth/.safetensors (state dict, with --factory), "
    ".keras/.h5 (Keras 3), .onnx"
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and the flags that say how to open a model file and describe its input."""
    parser.add_argument("--model", default="efficientnet_lite0", help=MODEL_HELP)
    add_model_file_arguments(parser)


def add_model_file_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to open a model file and override what it says of its input."""
    source = parser.add_argument_group("model files")
    source.add_argument(
        "--factory", metavar="PKG.MOD:FN",
        help="the function that builds the architecture of a state dict file",
    )  # fmt: skip
    source.add_argument(
        "--weights", metavar="FILE", help="weights (.safetensors, .pth) for a factory --model"
    )
    source.add_argument(
        "--trust-pickle", action="store_true",
        help="open a pickled full model (or a Keras Lambda layer): runs code from the file",
    )  # fmt: skip
    source.add_argument(
        "--input-name", metavar="NAME", help="the image input of an ONNX model with several inputs"
    )
    preset = parser.add_argument_group(
        "input preprocessing",
        "override the preset sidecar beside the model file (MODEL.preset.toml or .json), the "
        "model's metadata and its input shape",
    )
    preset.add_argument("--preset", metavar="FILE", help="a preset sidecar (TOML or JSON)")
    preset.add_argument(
        "--layout", choices=("nchw", "nhwc"), help="the input's layout (default: from its shape)"
    )
    preset.add_argument(
        "--size",
        type=_at_least(1),
        metavar="N",
        help="resize the shorter side to N, centre-crop N×N",
    )
    preset.add_argument(
        "--mean", metavar="R,G,B", help="normalization mean per channel (default: ImageNet's)"
    )
    preset.add_argument(
        "--std", metavar="R,G,B", help="normalization std per channel (default: ImageNet's)"
    )
    preset.add_argument(
        "--scale",
        type=_option_type("a number", _positive_scale, _scale_number),
        metavar="S",
        help="the model takes pixels (0-255) × S, e.g. 1/255",
    )
    preset.add_argument("--channel-order", choices=("rgb", "bgr"), help="the model's channel order")
    preset.add_argument("--classes", metavar="FILE", help="class names, one per line")


def load_options_from_args(args: argparse.Namespace) -> LoadOptions:
    """The model-file flags as :class:`~salience.loading.LoadOptions`, checked.

    Raises
    ------
    ValueError
        For a bad value, or file flags given with a bundled model.
    """
    from salience.loading import BUNDLED, LoadOptions, model_kind

    options = LoadOptions(
        input_name=args.input_name, layout=args.layout, size=args.size,
        mean=_triple("--mean", args.mean), std=_triple("--std", args.std), classes=args.classes,
        scale=args.scale, channel_order=args.channel_order, preset=args.preset,
        factory=args.factory, weights=args.weights, trust_pickle=args.trust_pickle,
    )  # fmt: skip
    if model_kind(args.model, options) == BUNDLED and (given := options.given()):
        flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
        raise InvalidInputError(
            f"{flags} apply to model files and factories, not to the bundled model {args.model}"
        )
    return options


def check_before_model(args: argparse.Namespace) -> None:
    """What can be checked of a command line before any model opens: the methods, the colormap,
    the image files and the model-file flags (the options' ranges are the parser's).

    Raises
    ------
    ValueError, LookupError, FileNotFoundError
        Naming the problem and the fix.
    """
    if isinstance(getattr(args, "method", None), str) and not method_names(args.method):
        raise InvalidInputError("name at least one method (salience methods lists them)")
    if getattr(args, "cmap", None) is not None:
        import numpy as np

        from salience import viz

        viz.colorize(np.zeros((1, 1)), args.cmap)  # an unknown name fails with suggestions
    if getattr(args, "images", None):
        from salience.zoo import SAMPLE_IMAGES

        for name in args.images:
            if not Path(name).is_file() and name not in SAMPLE_IMAGES:
                what = "a folder" if Path(name).is_dir() else "no file"
                raise MissingFileError(
                    f"{name} is {what}: give image files or bundled photos "
                    f"({', '.join(SAMPLE_IMAGES)})"
                )
    if hasattr(args, "trust_pickle") and not getattr(args, "data", False):
        load_options_from_args(args)


def open_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model named by ``--model`` (or ``salience layers MODEL``) and its file flags."""
    from salience.loading import open_model

    return open_model(args.model, load_options_from_args(args))


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
    from salience.methods import method_names as named_methods

    return named_methods(text)


def run_explain(args: argparse.Namespace) -> int:
    """``salience explain``: each image's files are written together, once it is explained."""
    from tqdm.auto import tqdm

    from salience import viz
    from salience.api import explain_all, make_explainer, method_options

    methods = method_names(args.method)
    loaded = open_model_from_args(args)
    adapter, model_name, names = loaded.adapter, loaded.name, loaded.class_names
    target = checked_target(args.target, loaded)
    prepared = [(item, _prepared(loaded, item)) for item in _inputs(args.images)]
    output = Path(args.output)
    values = method_values(args)
    explainers = [make_explainer(adapter, m, **method_options(m, values)) for m in methods]
    display = display_from_args(args)

    probabilities = []
    for item, image in prepared:
        with _about_image(item.label):
            probabilities.append(_print_predictions(adapter, item, image, model_name, names))
    sys.stdout.flush()

    grid_images, grid_rows, row_titles = [], [], []
    tasks = len(prepared) * len(explainers)
    bar = tqdm(total=tasks, disable=args.quiet or tasks <= PROGRESS_THRESHOLD, desc="explaining")
    finished = 0
    try:
        for (item, image), image_probabilities in zip(prepared, probabilities, strict=True):
            bar.set_postfix_str(item.label)
            with _about_image(item.label, finished=finished, output=output):
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
                    explanation = explanation.with_names(names, model=model_name)
                    stem = f"{item.label}_{name}"
                    maps = _encode_outputs(explanation, view, stem, display, files)
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
                output / "grid.png", grid_images, grid_rows, row_titles=row_titles,
                column_titles=[e.name for e in explainers], cmap=args.cmap, alpha=args.alpha,
            )  # fmt: skip
    print(f"wrote {tasks} explanations and {grid} to {output}/")
    return 0


def checked_target(text: str, loaded: LoadedModel) -> TargetSpec:
    """``--target`` for the model: a class name it has, an index or top-K within its classes."""
    from salience.targets import check_target, parse_target

    names = loaded.class_names
    return check_target(parse_target(text, names), len(names), model=loaded.name)


@contextmanager
def _about_image(label: str, *, finished: int = 0, output: Path | None = None) -> Iterator[None]:
    """An error while working on one image names it, and says what the images before it left.

    An error of the user's input or model becomes a :class:`CommandError` (one line); a bug of
    salience keeps its traceback, with a note naming the image.
    """
    try:
        yield
    except CommandError:
        raise
    except Exception as error:
        message = one_line_message(error, on=label)
        if message is None:
            error.add_note(f"(while explaining {label})")
            raise
        if finished and output is not None:
            message += f"; the {finished} image(s) before it are written to {output}/"
        raise CommandError(message) from error


def _prepared(loaded: LoadedModel, item: _Input) -> PreparedImage:
    """The image read and prepared for the model; an error names the image."""
    with _about_image(item.label):
        return loaded.preset.prepare(item.source)


def write_together(folder: Path, files: dict[str, bytes]) -> None:
    """Write files into ``folder`` so that they appear together or not at all.

    Each is written to a temporary file beside its place first; only when all are written are
    they renamed into place (:func:`salience.fileio.atomic_path`), and an error removes them all.
    """
    from salience.fileio import atomic_path

    with ExitStack() as stack:
        for name, data in files.items():
            stack.enter_context(atomic_path(folder / name)).write_bytes(data)


def _triple(flag: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InvalidInputError(f"{flag} takes 3 comma-separated numbers R,G,B, got {text!r}")
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


def run_evaluate(args: argparse.Namespace) -> int:
    """``salience evaluate``: deletion and insertion AUC per method, with a random baseline."""
    import torch

    from salience.evaluation.faithfulness import evaluate_methods

    methods = method_names(args.method)
    loaded = open_model_from_args(args)
    target = checked_target(args.target, loaded)
    inputs = _inputs(args.images)
    x = torch.cat([_prepared(loaded, item).tensor for item in inputs])
    report = evaluate_methods(
        loaded.adapter, x, methods, labels=[item.label for item in inputs], target=target,
        score=args.score, class_names=loaded.class_names, pixels_per_step=args.step,
        **method_values(args),  # with seed (also the random baseline's) and progress
    )  # fmt: skip
    print(f"faithfulness of {loaded.name} on {len(inputs)} image(s), {args.score} of the class:")
    print(report.format_table())
    output = Path(args.output)
    report.save(output, model=loaded.name)
    print(f"wrote faithfulness.csv, faithfulness.json and faithfulness.png to {output}/")
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
    x = torch.cat([_prepared(loaded, item).tensor for item in _inputs(args.images)])
    layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
    modes = ("cascading", "independent") if args.mode == "both" else (args.mode,)
    from salience.evaluation.randomization import sanity_check

    for mode in modes:
        result = sanity_check(
            loaded.adapter, x, methods, mode=mode, layers=layers, target=args.target,
            score=args.score, class_names=loaded.class_names, threshold=args.threshold,
            **values,
        )  # fmt: skip
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
    print(f"  {'method':<22} " + " ".join(f"{m:>15}" for m in result.metrics))
    for row in result.rows():
        print(f"  {row['method']:<22} " + " ".join(f"{row[m]:>15.2f}" for m in result.metrics))
    written = result.save(output)
    print(f"wrote {', '.join(path.name for path in written)} to {output}/")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``salience compare``: several methods' maps side by side, and how much they agree."""
    from salience import viz
    from salience.api import explain_all, make_explainer, method_options
    from salience.evaluation.agreement import agreement
    from salience.evaluation.plots import agreement_figure
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
    for item in _inputs(args.images):
        image = _prepared(loaded, item)
        with _about_image(item.label):
            found = explain_all(
                loaded.adapter, image.tensor, explainers, target=target, score=args.score,
                class_names=loaded.class_names,
            )  # fmt: skip
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
                output / f"{item.label}_compare.png", [image.original], [shown],
                row_titles=[title], column_titles=list(maps), cmap=args.cmap, alpha=args.alpha,
            ),
            viz.save_figure(agreement_figure(result), output / f"{item.label}_agreement.png"),
            result.save_json(output / f"{item.label}_agreement.json"),
        ]  # fmt: skip
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


def run_serve(args: argparse.Namespace) -> int:
    """``salience serve``: open the models once, then serve the page and the API."""
    try:
        import uvicorn

        from salience.server.app import create_app
        from salience.server.protocol import http_protocol
    except ImportError as error:
        raise MissingPackageError(
            f"salience serve needs FastAPI and uvicorn ({error}); pip install 'salience[server]'"
        ) from error
    from salience.loading import open_model
    from salience.server.limits import Limits

    names = [
        name.strip() for given in args.model or ["efficientnet_lite0"]
        for name in given.split(",") if name.strip()
    ]  # fmt: skip
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be in 1..65535, got {args.port}")
    limits = Limits(
        max_upload_bytes=max(1, int(args.max_upload_mb * 1024 * 1024)),
        max_pixels=args.max_pixels, time_limit=args.time_limit,
        max_pending_bytes=max(1, int(args.max_pending_mb * 1024 * 1024)),
    )  # fmt: skip
    models = [open_model(name) for name in dict.fromkeys(names)]
    app = create_app(models, limits=limits, workers=args.workers)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"salience: warning: listening on {args.host}; anyone who can reach this address can "
            "use the server (it has no authentication)",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    served = ", ".join(model.name for model in models)
    print(f"salience: serving {served} at http://{host}:{args.port}/ (API docs at /docs)")
    sys.stdout.flush()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=http_protocol())
    return 0


def run_batch(args: argparse.Namespace) -> int:
    """``salience batch``: explain a folder or data set, resumably, locally or on Ray."""
    from salience.runner import JobSpec, make_engine, run_job

    options = load_options_from_args(args)
    values = method_values(args)
    values.pop("progress")
    spec = JobSpec(
        model=args.model, load_options=options, methods=tuple(method_names(args.method)),
        options=values, target=args.target, score=args.score, auc=args.auc,
        pixels_per_step=args.step, display=display_from_args(args),
    )  # fmt: skip
    engine = make_engine(
        args.engine, args.workers, address=args.ray_address, chunk_size=args.chunk_size
    )
    try:
        summary = run_job(spec, args.input, args.output, engine=engine, progress=not args.quiet)
    except KeyboardInterrupt:
        print(
            f"salience: interrupted; the finished images are kept in {args.output}/: run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(
        f"{summary.total} images: {summary.explained} explained now "
        f"({summary.images_per_second:.2f} images/s), {summary.skipped} finished before, "
        f"{summary.failed} failed"
    )
    print(f"wrote {', '.join(path.name for path in summary.written)} to {summary.output}/")
    return 1 if summary.failed else 0


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
    from salience.adapters.base import LayerAccessAdapter
    from salience.adapters.layers import LayerError
    from salience.zoo import DEFAULT_SAMPLE, SAMPLE_IMAGES

    loaded = open_model_from_args(args)
    adapter = loaded.adapter
    if not isinstance(adapter, LayerAccessAdapter):
        raise LayerError(f"{loaded.name} is a black box (ONNX): salience cannot see its layers")
    sample = loaded.preset.prepare(SAMPLE_IMAGES[DEFAULT_SAMPLE]()).tensor
    try:
        default = adapter.resolve_layer(None, sample)
    except LayerError:
        default = None
    table = adapter.layer_table(sample)
    shape = "×".join(map(str, sample.shape))
    print(f"layers of {loaded.name} on a {shape} input (* = the CAM default):")
    for info in table:
        if not (args.all or info.spatial or info.name == default):
            continue
        shape = "×".join(map(str, info.shape[1:])) if info.shape is not None else "(not a tensor)"
        calls = f"  (called {info.calls}×)" if info.calls > 1 else ""
        mark = "*" if info.name == default else " "
        print(f"{mark} {info.name:<34} {info.kind:<20} {shape}{calls}")
    return 0


_PACKAGE = str(Path(__file__).resolve().parent) + os.sep
_DEBUG_HINT = " (salience --debug ... shows its traceback)"
USER_ERRORS = (SalienceError, OSError, MemoryError, ImportError)
"""Errors reported in one line: what salience refuses, and the machine's (files, memory,
packages); any other error is a bug and keeps its traceback."""


def _is_salience_code(frame: Any) -> bool:
    return frame.f_code.co_filename.startswith(_PACKAGE)


def _is_model_call(frame: Any) -> bool:
    """Whether the frame is a framework running a model (or a layer of it)."""
    module = frame.f_globals.get("__name__", "")
    if module == "torch.nn.modules.module":
        return frame.f_code.co_name in ("_call_impl", "_wrapped_call_impl")
    return module.startswith(("keras.", "onnxruntime."))


def raised_by_the_model(error: BaseException | None) -> bool:
    """Whether ``error`` came out of the model's own code: a model call that salience made, with
    no code of salience (a hook) running between that call and the error."""
    if error is None:
        return False
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    own = [i for i, frame in enumerate(frames) if _is_salience_code(frame)]
    return bool(own) and any(_is_model_call(frame) for frame in frames[own[-1] + 1 :])


def one_line_message(error: BaseException, *, on: str | None = None) -> str | None:
    """The one-line report of an error of the user's input, model or machine; None for a bug.

    The user's: what salience refuses (a :class:`~salience.errors.SalienceError`), what the
    model itself raised, files (OSError), memory and missing packages. Any other error is a
    bug of salience and keeps its traceback.
    """
    where = f" on {on}" if on else ""
    if raised_by_the_model(error):
        name = type(error).__name__
        return f"the model raised {name}{where}: {_first_line(error)}"
    if isinstance(error, USER_ERRORS):
        return f"{on}: {_first_line(error)}" if on else _first_line(error)
    return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``salience`` command; returns the exit status.

    An error of the user's input or model is one line on stderr (exit status 2); with
    ``--debug`` (or ``SALIENCE_DEBUG=1``) its traceback comes first. Any other error is a bug
    of salience and shows its traceback.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in arguments if not word.startswith("-")), "")
    try:
        args = build_parser(command).parse_args(arguments)
    except SystemExit as exit:  # --help, or a refused command line (one line on stderr)
        return int(exit.code or 0)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")
    try:
        check_before_model(args)
        return int(args.handler(args))
    except BrokenPipeError:  # e.g. `salience methods | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        message = one_line_message(error)
        if message is None:
            raise
        if debug:
            traceback.print_exception(error)
        elif any(map(raised_by_the_model, (error, error.__cause__))):
            message += _DEBUG_HINT
        print(f"salience: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
