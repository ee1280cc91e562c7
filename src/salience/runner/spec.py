"""What a batch job computes: the model (named by a string), methods, options, what to write.

A :class:`JobSpec` holds only strings, numbers and :class:`~salience.loading.LoadOptions`, so it
travels to worker processes and Ray actors by pickling; each worker opens the model from it once.
Its :meth:`~JobSpec.fingerprint` is the hash of every setting that changes an item's files: an
item finished under another fingerprint is computed again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from salience.errors import InvalidInputError
from salience.loading import LoadOptions
from salience.methods.base import EXPLAINER
from salience.methods.options import check_option_names, checked_options, options_of
from salience.registry import available, get
from salience.render import DisplayOptions
from salience.targets import SCORE_KINDS

LAYOUT_VERSION = 1
"""The layout of a job's output folder; part of every fingerprint."""
_FILE_OPTIONS = ("preset", "factory", "weights", "classes")
_LATER_OPTIONS = ("resize", "interpolation", "channels", "intensity_window", "device")
"""Load options added since jobs were first written: described only when set, so those resume."""


@dataclass(frozen=True)
class JobSpec:
    """A batch explanation job, independent of its inputs and of the engine that runs it.

    Attributes
    ----------
    model : str
        A bundled model's name, ``package.module:function`` or a model file
        (:func:`salience.loading.open_model`).
    load_options : LoadOptions
        How to open the model file and override its preprocessing.
    methods : tuple of str
        Registered method names.
    options : mapping
        The methods' options (``n_samples``, ``layer``, ``seed``, ...), given to each method
        that accepts them (:func:`salience.api.method_options`). Each must be an option of a
        registered method, and its value valid for each of the job's methods that takes it
        (:mod:`salience.methods.options`).
    target : str or int
        ``predicted``, a class index or name, or ``top-K``.
    score : {"logit", "probability"}
        The score the maps explain.
    auc : bool
        Also play deletion and insertion (RISE) on each map and record their areas; the curves
        follow the explained class and measure its softmax probability.
    pixels_per_step : int, optional
        Pixels changed per step of those curves (default: the image width).
    display : DisplayOptions
        How the overlays and thumbnails are drawn (:class:`salience.render.DisplayOptions`).
    """

    model: str = "efficientnet_lite0"
    load_options: LoadOptions = field(default_factory=LoadOptions)
    methods: tuple[str, ...] = ("gradient",)
    options: Mapping[str, Any] = field(default_factory=dict)
    target: str | int = "predicted"
    score: str = "logit"
    auc: bool = False
    pixels_per_step: int | None = None
    display: DisplayOptions = field(default_factory=DisplayOptions)

    def __post_init__(self) -> None:
        methods = tuple(self.methods)
        if not methods:
            raise InvalidInputError(
                "a batch job needs at least one method; salience methods lists them"
            )
        if len(set(methods)) != len(methods):
            raise InvalidInputError(f"each method may be asked for once; got {', '.join(methods)}")
        classes = {method: get(EXPLAINER, method) for method in methods}  # unknown names fail
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "options", dict(self.options))
        if "progress" in self.options:
            raise InvalidInputError(
                "progress is the engine's business; leave it out of the options"
            )
        registered = {name: get(EXPLAINER, name) for name in available(EXPLAINER)}
        check_option_names(registered, self.options, label="any method")
        taken = {name for cls in classes.values() for name in options_of(cls)}
        checked_options(classes, {k: v for k, v in self.options.items() if k in taken})
        if self.score not in SCORE_KINDS:
            raise InvalidInputError(
                f"unknown score {self.score!r}; choose {' or '.join(SCORE_KINDS)}"
            )
        if self.pixels_per_step is not None and not (
            isinstance(self.pixels_per_step, int) and self.pixels_per_step >= 1
        ):
            raise InvalidInputError(
                f"pixels per step must be an int >= 1, got {self.pixels_per_step!r}"
            )

    def with_absolute_paths(self) -> JobSpec:
        """The same job with the files it names made absolute, for workers in other folders."""
        model = self.model
        if Path(model).exists():
            model = str(Path(model).resolve())
        changes = {
            name: str(Path(value).resolve())
            for name in _FILE_OPTIONS
            if isinstance(value := getattr(self.load_options, name), str) and Path(value).exists()
        }
        return replace(self, model=model, load_options=replace(self.load_options, **changes))

    def describe(self) -> dict[str, Any]:
        """The job's settings as JSON-ready values."""
        return {
            "model": self.model,
            "load_options": _plain(
                {
                    name: value
                    for name, value in asdict(self.load_options).items()
                    if value is not None or name not in _LATER_OPTIONS
                }
            ),
            "methods": list(self.methods),
            "options": _plain(self.options),
            "target": self.target,
            "score": self.score,
            "auc": self.auc,
            "pixels_per_step": self.pixels_per_step,
            "display": _display_settings(self.display),
        }

    def fingerprint(self) -> str:
        """The hash of the settings and of the model files (size and modification time)."""
        named = [self.model, *(getattr(self.load_options, name) for name in _FILE_OPTIONS)]
        files = {name: _file_stamp(name) for name in named if isinstance(name, str)}
        content = {
            "layout": LAYOUT_VERSION,
            **self.describe(),
            "files": {name: stamp for name, stamp in files.items() if stamp is not None},
        }
        text = json.dumps(content, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _display_settings(display: DisplayOptions) -> dict[str, Any]:
    """The display's fields; ``view_size`` only when set, so jobs written before it resume."""
    settings = asdict(display)
    if settings["view_size"] is None:
        del settings["view_size"]
    if settings["sign"] == "auto":
        del settings["sign"]
    return settings


def _file_stamp(name: str) -> list[int] | None:
    """``[size, mtime_ns]`` of an existing file (a changed model file changes the fingerprint)."""
    path = Path(name)
    if not path.is_file():
        return None
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _plain(value: Any) -> Any:
    """Tuples as lists, mappings with string keys: what ``json`` writes and reads back."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
