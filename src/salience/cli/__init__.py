"""The ``salience`` command: explain images with the bundled model, list models and methods.

One module per command group (:mod:`~salience.cli.explain`, :mod:`~salience.cli.checks`,
:mod:`~salience.cli.serve`, :mod:`~salience.cli.batch`, :mod:`~salience.cli.catalog`), the
shared flags in :mod:`~salience.cli.arguments` and the one-line errors in
:mod:`~salience.cli.reporting`. Importing the package imports no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

# Read by PyTorch when it starts; doubles no-grad batched throughput on small CPUs.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from salience.cli.arguments import (
    MODEL_HELP,
    Parser,
    add_display_arguments,
    add_images_argument,
    add_method_arguments,
    add_model_arguments,
    add_model_file_arguments,
    add_output_arguments,
    add_overlay_arguments,
    at_least,
    check_before_model,
    checked_target,
    display_from_args,
    load_options_from_args,
    method_names,
    method_values,
    number,
    open_model_from_args,
    percent,
)
from salience.cli.batch import run_batch
from salience.cli.catalog import run_layers, run_methods, run_models
from salience.cli.checks import (
    COMPARE_METHODS,
    EVALUATE_METHODS,
    SANITY_METHODS,
    run_compare,
    run_evaluate,
    run_sanity,
)
from salience.cli.explain import DEFAULT_METHODS, run_explain, write_together
from salience.cli.reporting import (
    DEBUG_HELP,
    DEBUG_HINT,
    DEBUG_VARIABLE,
    USER_ERRORS,
    CommandError,
    one_line_message,
    raised_by_the_model,
)
from salience.cli.rows import add_table_arguments
from salience.cli.serve import run_serve

__all__ = [
    "USER_ERRORS",
    "CommandError",
    "add_method_arguments",
    "add_model_arguments",
    "add_model_file_arguments",
    "build_parser",
    "check_before_model",
    "checked_target",
    "display_from_args",
    "load_options_from_args",
    "main",
    "method_names",
    "method_values",
    "one_line_message",
    "open_model_from_args",
    "raised_by_the_model",
    "write_together",
]


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

    parser = Parser(
        prog="salience", description="Saliency maps: what in this input made the model decide?"
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser(
        "explain",
        help="explain images with a bundled model or an ONNX file",
        description="Print the top-5 predictions and write overlays, a grid and raw maps.",
    )
    add_images_argument(explain)
    explain.add_argument(
        "--method",
        default=DEFAULT_METHODS,
        help=f"comma-separated methods (salience methods lists them); default {DEFAULT_METHODS}",
    )
    with_methods(explain, "explain")
    add_display_arguments(explain)
    add_overlay_arguments(explain)
    add_output_arguments(explain, figure=True)
    add_model_arguments(explain)
    add_table_arguments(explain)
    explain.set_defaults(handler=run_explain)

    layers = commands.add_parser(
        "layers",
        help="list a model's layers with their output shapes (CAM candidates)",
        description="Every module the model runs on one input, with its output shape; the "
        "layer CAMs use by default is marked.",
    )
    layers.add_argument("model", nargs="?", default="efficientnet_lite0", help=MODEL_HELP)
    layers.add_argument("--all", action="store_true", help="also layers without a spatial output")
    layers.add_argument(
        "--input",
        metavar="FILE",
        help="probe the layers with this image, scan (.nii.gz, .npy) or signal (.csv, .npy); by "
        "default the input shape the model declares, else the sample image",
    )
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
    add_images_argument(evaluate)
    evaluate.add_argument(
        "--method",
        default=EVALUATE_METHODS,
        help=f"comma-separated methods (salience methods lists them); default {EVALUATE_METHODS}",
    )
    with_methods(evaluate, "evaluate")
    evaluate.set_defaults(score="probability")
    evaluate.add_argument(
        "--step",
        type=at_least(1),
        metavar="N",
        help="pixels changed per step (default: image width)",
    )
    add_output_arguments(evaluate)
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
    add_images_argument(sanity)
    sanity.add_argument(
        "--method",
        default=SANITY_METHODS,
        help=f"comma-separated methods; default {SANITY_METHODS}",
    )
    sanity.add_argument(
        "--mode",
        choices=("cascading", "independent", "both"),
        default="cascading",
        help="how the blocks are randomized (default: cascading)",
    )
    sanity.add_argument(
        "--layers",
        metavar="A,B,...",
        help="the blocks to randomize, top first (default: every block with weights)",
    )
    sanity.add_argument(
        "--threshold",
        type=number,
        default=0.5,
        help="verdict threshold on the mean rank correlation of the absolute maps (default 0.5)",
    )
    sanity.add_argument(
        "--data",
        action="store_true",
        help="run the data randomization test on the digits instead (no images, no --model)",
    )
    with_methods(sanity, "sanity")
    add_output_arguments(sanity)
    add_model_arguments(sanity)
    sanity.set_defaults(handler=run_sanity)

    compare = commands.add_parser(
        "compare",
        help="agreement between methods: maps side by side and pairwise similarity",
        description="Explain each image with several methods; write the maps side by side "
        "(IMAGE_compare.png) and the pairwise agreement matrix (Spearman rank correlation and "
        "intersection over union of the top pixels) as a figure and JSON. Over several images "
        "or a folder, also how often each pair agrees: agreement_summary.csv, "
        "agreement_summary_images.csv, .json and the histograms agreement_summary.png.",
    )
    add_images_argument(compare)
    compare.add_argument(
        "--method",
        default=COMPARE_METHODS,
        help=f"comma-separated methods, at least 2 (or cams); default {COMPARE_METHODS}",
    )
    compare.add_argument(
        "--top",
        type=percent,
        default=10.0,
        metavar="PERCENT",
        help="the top percent of pixels whose overlap is measured (default 10)",
    )
    with_methods(compare, "compare")
    add_overlay_arguments(compare)
    add_output_arguments(compare)
    add_model_arguments(compare)
    compare.set_defaults(handler=run_compare, folders=True)

    serve = commands.add_parser(
        "serve",
        help="the web viewer and HTTP API: explain images in the browser",
        description="Serve a page where you drop an image, choose methods and see the maps side "
        "by side, and the same service as an HTTP API (docs at /docs). Needs "
        "pip install 'salience[server]'.",
    )
    serve.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help="a model to serve (repeat, or separate with commas); default efficientnet_lite0",
    )
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
    serve.add_argument(
        "--max-values",
        type=int,
        default=8 * 2**20,
        help="largest scan or signal (voxels or time steps, all channels), checked from its "
        "header before it is read (default 8388608)",
    )
    serve.add_argument(
        "--max-rows", type=int, default=1000, help="most rows of an uploaded table of features"
    )
    serve.set_defaults(handler=run_serve)

    batch = commands.add_parser(
        "batch",
        help="explain a folder or data set: maps, overlays, a results table, an index page",
        description="Explain every image of INPUT (a folder, a glob pattern, or a CSV/Parquet "
        "manifest with a path column and an optional label column) into OUT: per image its "
        "maps (.npz + .json), overlays and thumbnails (PNG), and results.csv / results.parquet "
        "and index.html. Resumable: a re-run skips the images finished under the same settings "
        "and redoes the rest. Exits 1 when an image failed (its error is in the table). A "
        "CSV/Parquet table without a path column is rows of features: their attributions go "
        "to attributions.parquet (or .csv), with charts.",
    )
    batch.add_argument("input", metavar="INPUT", help="folder, glob pattern, or .csv/.parquet")
    batch.add_argument(
        "--method",
        default="gradient",
        help="comma-separated methods (salience methods lists them); default gradient",
    )
    with_methods(batch, "batch")
    batch.add_argument(
        "--auc",
        action="store_true",
        help="also deletion and insertion AUC per method (probability of the explained class)",
    )
    batch.add_argument(
        "--step",
        type=at_least(1),
        metavar="N",
        help="AUC: pixels per step (default: the image width)",
    )
    add_display_arguments(batch)
    add_overlay_arguments(batch)
    batch.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: worker processes on this machine; ray: a Ray cluster (salience[ray])",
    )
    batch.add_argument(
        "--workers", type=at_least(1), help="worker processes / Ray actors (default: one per core)"
    )
    batch.add_argument(
        "--ray-address", metavar="ADDRESS", help="the Ray cluster (default: RAY_ADDRESS or local)"
    )
    batch.add_argument(
        "--chunk-size",
        type=at_least(1),
        metavar="N",
        help="ray: images per actor call (default 4)",
    )
    add_output_arguments(batch)
    add_model_arguments(batch)
    add_table_arguments(batch)
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
            message += DEBUG_HINT
        print(f"salience: error: {message}", file=sys.stderr)
        return 2
