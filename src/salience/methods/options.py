"""The options a method takes, each declared once, next to the method.

An :class:`Option` says everything about one keyword option: its name, type, default, bounds or
choices, help, and the flag under which the ``salience`` command and the HTTP form take it. An
explainer class lists its own in ``options``; a subclass adds to its parents' (:func:`options_of`
gathers them), and an option shared by several methods (``seed``, ``chunk_size``, ``layer``, ...)
is one object referenced by each. The method's ``__init__`` validates through it, and the CLI
flags, the server's form and ``/api/methods``, the batch job spec and ``explain_all`` are
generated from it.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from salience.errors import InvalidInputError
from salience.methods.convergence import AUTO

_KIND_TEXT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Option:
    """One keyword option of one or more methods.

    Attributes
    ----------
    name : str
        The keyword of the method's ``__init__`` (``n_samples``).
    kind : type
        ``int``, ``float``, ``bool``, ``str``, or ``object`` for values only Python passes.
    default : object
        The value when the option is not given.
    help : str
        One line for ``--help``, the form's documentation and the page.
    flag : str, optional
        The name of the ``salience`` flag (``samples`` for ``--samples``) and, with ``_`` for
        ``-``, of the form field; None for an option of the Python API only. A ``bool`` option's
        flag is a switch that sets the opposite of the default.
    low, high : float, optional
        Bounds of a number, inclusive unless ``low_open``.
    low_open : bool
        The lower bound is excluded.
    choices : tuple of str
        The values a string may take.
    optional : bool
        None is accepted too.
    more : str
        What else the method accepts and checks itself (``"a pair of them"``).
    request_max : float, optional
        The most one web request may ask for: the server's cost limit, not a bound of the method.
    menu : str, optional
        Where the page finds the choices that depend on the model (``"layers"``).
    auto : bool
        The value ``"auto"`` is accepted too (a sample count grown until the map converges).
    """

    name: str
    kind: type
    default: Any
    help: str
    flag: str | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    more: str = ""
    request_max: float | None = None
    menu: str | None = None
    auto: bool = False

    @property
    def field(self) -> str | None:
        """The form field's name: the flag with ``_`` for ``-``."""
        return None if self.flag is None else self.flag.replace("-", "_")

    def bounds_text(self) -> str:
        """The bounds in words: ``>= 1``, ``in (0, 1]``, ``one of zeros, mean, blur``."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"<= {self.high}"
        return ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``"must be an integer >= 1, got 0"``), or None."""
        if value is None and self.optional:
            return None
        if self.auto and value == AUTO:
            return None
        if not _is_kind(value, self.kind):
            if self.more:
                return None  # another kind of value, which the method itself checks
            expected = _KIND_TEXT.get(self.kind, self.kind.__name__)
            return f"must be {expected}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"must be {self.bounds_text()}, got {value!r}"
        if self.kind in (int, float) and not _within(self, value):
            what = "an integer" if self.kind is int else "a number"
            bounds = self.bounds_text()
            return f"must be {'a finite number' if bounds == '' else what} {bounds}, got {value}"
        return None

    def check(self, value: Any) -> Any:
        """``value`` when it is valid.

        Raises
        ------
        InvalidInputError
            Naming the option, what is wrong and what it must be.
        """
        problem = self.problem(value)
        if problem is None:
            return value
        if self.choices and isinstance(value, str):
            more = f", {self.more}" if self.more else ""
            raise InvalidInputError(
                f"unknown {self.name} {value!r}; choose {', '.join(self.choices)}{more}"
            )
        raise InvalidInputError(f"{self.name} {problem}")

    def describe(self) -> dict[str, Any]:
        """The option as JSON (what ``/api/methods`` lists)."""
        return {
            "name": self.name,
            "field": self.field,
            "type": self.kind.__name__,
            "default": self.default,
            "low": self.low,
            "high": self.high,
            "low_open": self.low_open,
            "choices": list(self.choices),
            "request_max": self.request_max,
            "menu": self.menu,
            "auto": self.auto,
            "help": self.help,
        }


def or_auto(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A text parser that also takes ``auto``: the ``salience`` flags' and the form fields'
    reading of a count such as ``--samples auto``."""

    def parse(text: str) -> Any:
        return AUTO if text.strip() == AUTO else convert(text)

    parse.__name__ = f"{getattr(convert, '__name__', 'value')} or auto"
    return parse


def _is_kind(value: Any, kind: type) -> bool:
    if kind is object:
        return True
    if kind is bool:
        return isinstance(value, bool | numbers.Integral) and value in (0, 1)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, kind)


def _within(option: Option, value: float) -> bool:
    if not math.isfinite(value):
        return False
    if option.low is not None and (value <= option.low if option.low_open else value < option.low):
        return False
    return option.high is None or value <= option.high


# Options several methods share: declared once, referenced by each.
SEED = Option(
    "seed",
    int,
    0,
    "seed of random methods; the same seed gives the same map",
    flag="seed",
    low=0,
    optional=True,
    request_max=2**31 - 1,
)
CHUNK_SIZE = Option(
    "chunk_size",
    int,
    None,
    "samples per model pass (default: the method's measured size); does not change the map",
    low=1,
    optional=True,
)
PROGRESS = Option("progress", bool, False, "show a progress bar")
LAYER = Option(
    "layer",
    object,
    "auto",
    "CAM layer name (salience layers MODEL lists them); default: the last feature map",
    flag="layer",
    menu="layers",
)
SOFTMAX = Option(
    "softmax", bool, True, "weigh by the target's softmax probability (paper), not the score"
)


def options_of(cls: type) -> dict[str, Option]:
    """Every option an explainer class takes: its own ``options`` and its parents', by name."""
    gathered: dict[str, Option] = {}
    for klass in reversed(cls.__mro__):
        for option in klass.__dict__.get("options", ()):
            gathered[option.name] = option
    return gathered


def unknown_option_error(name: str, methods: str, known: Iterable[str]) -> InvalidInputError:
    """The error for an option ``name`` that none of ``methods`` takes, with the close matches."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return InvalidInputError(
        f"{methods or 'no method named'} takes no option {name!r}{hint} (options: "
        f"{', '.join(known) or 'none'})"
    )


def check_option_names(
    classes: Mapping[str, type], values: Mapping[str, Any], *, label: str | None = None
) -> None:
    """Refuse an option that none of ``classes`` (method name → class) takes.

    Parameters
    ----------
    classes : mapping of str to type
        The methods, by name.
    values : mapping
        The options, by keyword.
    label : str, optional
        How the message names the methods (default: their names, joined by "or").

    Raises
    ------
    InvalidInputError
        Naming the option, its close matches and the options the methods take.
    """
    known = {name for cls in classes.values() for name in options_of(cls)}
    for name in values:
        if name not in known:
            raise unknown_option_error(name, label or " or ".join(classes), known)


def checked_options(
    classes: Mapping[str, type], values: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``values`` checked against the methods' schemas, and each method's share of them.

    Every name must be taken by one of the methods, and every value must be valid for each
    method that takes it (an option shared by methods is one declaration, but two methods may
    declare different options under one name).

    Returns
    -------
    dict of str to dict
        Method name → the options it takes, validated.

    Raises
    ------
    InvalidInputError
        For an unknown name (with close matches) or a value out of bounds.
    """
    check_option_names(classes, values)
    shares: dict[str, dict[str, Any]] = {}
    for method, cls in classes.items():
        schema = options_of(cls)
        shares[method] = {
            name: schema[name].check(value) for name, value in values.items() if name in schema
        }
    return shares
