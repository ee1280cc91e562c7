"""The errors salience reports in one line: the user's input, model, files or machine.

Every error salience raises on purpose is a :class:`SalienceError`, and also the builtin a
caller already catches (``ValueError`` for a bad value, ``LookupError`` for an unknown name...),
so ``except ValueError`` keeps working. The command line prints a :class:`SalienceError` as one
line and the server answers it as a 4xx JSON error; any other exception is a bug of salience and
keeps its traceback.

This module imports nothing from salience, so every layer can raise these errors.
"""

from __future__ import annotations

__all__ = [
    "InvalidInputError",
    "MissingFileError",
    "MissingPackageError",
    "NotFoundError",
    "SalienceError",
    "UnsupportedError",
    "first_line",
]


class SalienceError(Exception):
    """An error of the user's input, model, files or machine that salience reports in one line.

    Its message names the problem and the fix; its first line is the whole report.
    """


class InvalidInputError(SalienceError, ValueError):
    """A value salience cannot use: out of range, of the wrong shape, misspelled or conflicting."""


class TooLargeError(InvalidInputError):
    """An input over a size limit (values, rows), refused before its data is read."""


class UnsupportedError(SalienceError, TypeError):
    """An object of a kind salience cannot work with (a model, an input, a layer spec...)."""


class NotFoundError(SalienceError, LookupError):
    """A name that is not there: a method, layer, class, attribute or key."""


class MissingFileError(SalienceError, FileNotFoundError):
    """A file or folder the user named that does not exist."""


class MissingPackageError(SalienceError, ImportError):
    """An optional package a feature needs is not installed, or cannot be used as it is."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty.

    Parameters
    ----------
    error
        Any exception.

    Returns
    -------
    str
        The line a one-line report quotes.
    """
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
