"""One registry per kind (explainers, models, ...): its names drive the CLI and the API."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from salience.errors import InvalidInputError, SalienceError

T = TypeVar("T")

_REGISTRIES: dict[str, dict[str, Any]] = {}
_BUILT_IN = {
    "method": "salience.methods",
    "model": "salience.zoo",
    "model format": "salience.models",
}
"""The module whose import registers each kind's built-in entries."""


def _entries(kind: str) -> dict[str, Any]:
    if kind in _BUILT_IN:
        importlib.import_module(_BUILT_IN[kind])
    return _REGISTRIES.get(kind, {})


class UnknownNameError(SalienceError, KeyError, ValueError):
    """A name that no registry entry carries; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def register(kind: str, name: str) -> Callable[[T], T]:
    """Register an object under ``kind``/``name``; use as a decorator.

    Parameters
    ----------
    kind : str
        Registry kind, e.g. ``"method"`` or ``"model"``.
    name : str
        Public name of the entry; must be unique within the kind.
    """

    def decorator(obj: T) -> T:
        entries = _REGISTRIES.setdefault(kind, {})
        if name in entries and entries[name] is not obj:
            raise InvalidInputError(f"{kind} {name!r} is already registered")
        entries[name] = obj
        return obj

    return decorator


def get(kind: str, name: str) -> Any:
    """Return the entry registered as ``kind``/``name``.

    Raises
    ------
    UnknownNameError
        If the name is unknown; the message lists the known names and close matches.
    """
    entries = _entries(kind)
    key = name.strip().lower().replace("-", "_")
    if key in entries:
        return entries[key]
    known = sorted(entries)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}")


def available(kind: str, *, sort: bool = True) -> list[str]:
    """Names registered under ``kind``: sorted, or in the order they were registered."""
    names = list(_entries(kind))
    return sorted(names) if sort else names
