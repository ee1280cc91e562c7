"""The flag groups the commands share, their ``type=`` validators, and what the flags open."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from salience.cli.reporting import about_image
from salience.errors import InvalidInputError, MissingFileError

if TYPE_CHECKING:
    from salience.images import PreparedImage
    from salience.loading import LoadedModel, LoadOptions
    from salience.methods.options import Option
    from salience.render import DisplayOptions
    from salience.targets import TargetSpec


class DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` that states every option's default (where its help does not already)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        shown = not hidden and bool(action.option_strings)
        if shown and "default" not in text.lower() and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line; the usage is one ``--help`` away; its help
    states the defaults (its subcommands' parsers are of this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"salience: error: {message} (see {self.prog} --help)\n")


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


def number(text: str) -> float:
    return _option_type("a number", _finite, float)(text)


def at_least(low: int) -> Callable[[str], int]:
    def check(value: int) -> None:
        if value < low:
            raise InvalidInputError(f"must be an integer >= {low}, got {value}")

    return _option_type("an integer", check, int)


def _fraction(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"must be in [0, 1], got {value}")


def percent(text: str) -> float:
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


FIGURE_SUFFIX = ".png"
"""``-o NAME.png`` of ``salience explain``: the one figure's file, not a folder."""


def _output_folder_or_figure(text: str) -> str:
    """``-o`` of ``salience explain``: a folder, or a ``.png`` file in a folder that can be made."""
    path = Path(text)
    if path.suffix.lower() == FIGURE_SUFFIX and not path.is_dir():
        _output_folder(str(path.parent))
        return text
    return _output_folder(text)


def _scale_number(text: str) -> float:
    """A number, or a fraction such as ``1/255``."""
    numerator, slash, denominator = text.partition("/")
    return float(numerator) / float(denominator) if slash else float(text)


def _positive_scale(value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise InvalidInputError(f"must be a positive finite number, got {value}")


def _interpolation(value: str) -> None:
    from salience.images import INTERPOLATIONS

    if value not in INTERPOLATIONS:
        raise InvalidInputError(f"must be one of {', '.join(INTERPOLATIONS)}, got {value!r}")


def _window_pair(text: str) -> tuple[float, float]:
    low, high = (float(part) for part in text.split(","))
    return low, high


def _ordered_window(value: tuple[float, float]) -> None:
    if not (math.isfinite(value[0]) and math.isfinite(value[1]) and value[0] < value[1]):
        raise InvalidInputError(f"must be LOW,HIGH with LOW < HIGH, got {value[0]:g},{value[1]:g}")


def add_display_arguments(parser: argparse.ArgumentParser) -> None:
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
        type=_option_type("an int", at_least(1), int),
        metavar="PIXELS",
        help="draw the overlays on the photo shrunk to this longest side (default: its own size)",
    )
    parser.add_argument(
        "--sign",
        default="auto",
        choices=("auto", "all", "absolute_value", "positive", "negative"),
        help="how a map's sign is shown: all (diverging, zero neutral), absolute_value, positive, "
        "negative (sequential from zero); auto (default): all for a map with both signs",
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
        sign=getattr(args, "sign", "auto"),
    )


def add_output_arguments(parser: argparse.ArgumentParser, *, figure: bool = False) -> None:
    """``-o`` and ``--quiet``; with ``figure``, ``-o`` may name the one figure (``cat.png``)."""
    if figure:
        parser.add_argument(
            "-o",
            "--output",
            default="salience-out",
            type=_output_folder_or_figure,
            help="output folder, or NAME.png for one image and one method: that figure, with "
            "NAME.npz and NAME.json beside it",
        )
    else:
        parser.add_argument(
            "-o", "--output", default="salience-out", type=_output_folder, help="output folder"
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_overlay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cmap",
        default=None,
        help="colormap (jet, viridis, inferno, RdBu_r, ...); default: RdBu_r for signed maps, jet",
    )
    parser.add_argument(
        "--alpha",
        type=_option_type("a number", _fraction, float),
        default=0.5,
        help="overlay opacity in [0, 1]",
    )


def add_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files, or names of bundled photos (chelsea, coffee, rocket, astronaut); "
        "default: chelsea",
    )


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--score`` and the methods' options (samples, steps, layer, seed, ...)."""
    parser.add_argument(
        "--target",
        default="predicted",
        type=_target,
        help="predicted | class INDEX (from 0) | class NAME | top-K (default: predicted)",
    )
    parser.add_argument(
        "--score",
        choices=("logit", "probability"),
        default="logit",
        help="what is explained: the class's logit or its softmax probability",
    )
    from salience.methods import flagged_options

    for option, methods in flagged_options():
        parser.add_argument(f"--{option.flag}", **_flag_settings(option, methods))


def _flag_settings(option: Option, methods: Sequence[str]) -> dict[str, Any]:
    """``add_argument``'s settings for a method option (:class:`~salience.methods.options.Option`):
    its type and bounds checked by the option itself, its help with the methods that take it."""
    from salience.methods.options import or_auto

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
        if option.auto:
            convert = or_auto(convert)
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
    parser.add_argument(
        "--device",
        metavar="cpu|cuda|mps",
        help="where a PyTorch model runs: cpu, cuda (cuda:N for the N-th GPU) or mps (default: "
        "the model's own device, the CPU for a model salience opens)",
    )
    add_model_file_arguments(parser)


def add_model_file_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to open a model file and override what it says of its input."""
    source = parser.add_argument_group("model files")
    source.add_argument(
        "--factory",
        metavar="PKG.MOD:FN",
        help="the function that builds the architecture of a state dict file",
    )
    source.add_argument(
        "--weights", metavar="FILE", help="weights (.safetensors, .pth) for a factory --model"
    )
    source.add_argument(
        "--trust-pickle",
        action="store_true",
        help="open a pickled full model (or a Keras Lambda layer): runs code from the file",
    )
    source.add_argument(
        "--input-name", metavar="NAME", help="the image input of an ONNX model with several inputs"
    )
    source.add_argument(
        "--output-key",
        metavar="KEY",
        help="the output to explain of a model that returns several (a dict key, a field, an "
        "index, an ONNX output's name; default: the only tensor, or logits; an ONNX model's "
        "first output)",
    )
    source.add_argument(
        "--output-kind",
        choices=("softmax", "sigmoid", "multilabel", "regression"),
        help="how the outputs read (default: from the final activation; one output without a "
        "sigmoid is a regression)",
    )
    source.add_argument(
        "--backend",
        choices=("torch", "tensorflow"),
        help="what runs a Keras file (.keras, .h5): Keras' torch backend (default) or TensorFlow",
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
        type=at_least(1),
        metavar="N",
        help="resize the shorter side to N, centre-crop N×N",
    )
    preset.add_argument(
        "--resize",
        choices=("shorter", "squash"),
        help="shorter: resize the shorter side and centre-crop; squash: stretch to the input "
        "size (default: the preset's, else shorter)",
    )
    preset.add_argument(
        "--interpolation",
        type=_option_type("a filter", _interpolation, str),
        metavar="FILTER",
        help="resampling filter: bicubic, bilinear, nearest, lanczos, box or hamming",
    )
    preset.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="the channels the model takes: 1 (grayscale) or 3 (RGB) (default: from the model)",
    )
    preset.add_argument(
        "--intensity-window",
        type=_option_type("LOW,HIGH", _ordered_window, _window_pair),
        metavar="LOW,HIGH",
        help="intensity window of grayscale images, in their sample values (e.g. 0,4095 "
        "for 12-bit data in a 16-bit PNG), mapped onto 0..1 before the normalization",
    )
    preset.add_argument(
        "--mean",
        metavar="R,G,B",
        help="normalization mean per channel, or one for all (default: ImageNet's)",
    )
    preset.add_argument(
        "--std",
        metavar="R,G,B",
        help="normalization std per channel, or one for all (default: ImageNet's)",
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

    if getattr(args, "backend", None):
        from salience.models.tensorflow import use_backend

        use_backend(args.backend)
    options = LoadOptions(
        input_name=args.input_name,
        layout=args.layout,
        size=args.size,
        mean=_triple("--mean", args.mean),
        std=_triple("--std", args.std),
        classes=args.classes,
        scale=args.scale,
        channel_order=args.channel_order,
        preset=args.preset,
        factory=args.factory,
        weights=args.weights,
        output_kind=getattr(args, "output_kind", None),
        output_key=getattr(args, "output_key", None),
        trust_pickle=args.trust_pickle,
        resize=args.resize,
        interpolation=args.interpolation,
        channels=args.channels,
        intensity_window=args.intensity_window,
        device=getattr(args, "device", None),
    )
    if model_kind(args.model, options) == BUNDLED and (given := options.given()):
        flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
        raise InvalidInputError(
            f"{flags} apply to model files and factories, not to the bundled model {args.model}"
        )
    return options


def _triple(flag: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3):
        raise InvalidInputError(
            f"{flag} takes 3 comma-separated numbers R,G,B (or 1: grayscale, or every "
            f"channel), got {text!r}"
        )
    return values


def check_before_model(args: argparse.Namespace) -> None:
    """What can be checked of a command line before any model opens: the methods, occlusion's
    window against a stride given with it, the colormap, the image files and the model-file
    flags (the options' ranges are the parser's).

    Raises
    ------
    ValueError, LookupError, FileNotFoundError
        Naming the problem and the fix.
    """
    if isinstance(getattr(args, "method", None), str):
        methods = method_names(args.method)
        if not methods:
            raise InvalidInputError("name at least one method (salience methods lists them)")
        if "occlusion" in methods and getattr(args, "stride", None) is not None:
            from salience.methods.perturbation import check_window_stride

            check_window_stride((args.window,), (args.stride,))
    if getattr(args, "device", None) is not None:
        from salience.adapters.torch import check_device

        check_device(args.device)  # a GPU this machine lacks, before the model opens
    if getattr(args, "cmap", None) is not None:
        import numpy as np

        from salience import viz

        viz.colorize(np.zeros((1, 1)), args.cmap)  # an unknown name fails with suggestions
    if getattr(args, "images", None):
        from salience.zoo import SAMPLE_IMAGES

        for name in args.images:
            if getattr(args, "folders", False) and Path(name).is_dir():
                continue  # a folder of images, for the commands that take them
            if not Path(name).is_file() and name not in SAMPLE_IMAGES:
                what = "a folder" if Path(name).is_dir() else "no file"
                batch = (
                    f", or explain the folder with: salience batch {name}" if what[0] == "a" else ""
                )
                raise MissingFileError(
                    f"{name} is {what}: give image files or bundled photos "
                    f"({', '.join(SAMPLE_IMAGES)}){batch}"
                )
    if hasattr(args, "trust_pickle") and not getattr(args, "data", False):
        load_options_from_args(args)


def open_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model named by ``--model`` (or ``salience layers MODEL``) and its file flags."""
    from salience.loading import open_model

    return open_model(args.model, load_options_from_args(args))


def checked_target(text: str, loaded: LoadedModel) -> TargetSpec:
    """``--target`` for the model: a class name it has, an index or top-K within its classes."""
    from salience.targets import check_target, parse_target

    names = loaded.class_names
    return check_target(parse_target(text, names), len(names), model=loaded.name)


def method_names(text: str) -> list[str]:
    """Methods named on the command line: comma-separated, ``cams`` for every CAM."""
    from salience.methods import method_names as named_methods

    return named_methods(text)


@dataclass(frozen=True)
class ImageInput:
    label: str
    source: Any


def image_inputs(names: Sequence[str]) -> list[ImageInput]:
    from salience.zoo import DEFAULT_SAMPLE, SAMPLE_IMAGES

    inputs: list[ImageInput] = []
    for name in names or [DEFAULT_SAMPLE]:
        if not Path(name).exists() and name in SAMPLE_IMAGES:
            inputs.append(ImageInput(name, SAMPLE_IMAGES[name]()))
        else:
            inputs.append(ImageInput(Path(name).stem or "image", name))
    labels = [item.label for item in inputs]
    return [
        ImageInput(f"{item.label}-{i}" if labels.count(item.label) > 1 else item.label, item.source)
        for i, item in enumerate(inputs)
    ]


def prepared_image(loaded: LoadedModel, item: ImageInput) -> PreparedImage:
    """The image read and prepared for the model; an error names the image."""
    with about_image(item.label):
        return loaded.preset.prepare(item.source)
