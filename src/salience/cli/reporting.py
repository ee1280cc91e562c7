"""One-line error reports: which errors are the user's (input, model, machine) and how they read."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from salience.errors import SalienceError, first_line

DEBUG_VARIABLE = "SALIENCE_DEBUG"


DEBUG_HELP = f"show the traceback of every error (also {DEBUG_VARIABLE}=1)"


class CommandError(SalienceError):
    """An image or model failed for a reason of the user's, reported in one line."""


_PACKAGE = str(Path(__file__).resolve().parents[1]) + os.sep


DEBUG_HINT = " (salience --debug ... shows its traceback)"


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
        return f"the model raised {name}{where}: {first_line(error)}"
    if isinstance(error, USER_ERRORS):
        return f"{on}: {first_line(error)}" if on else first_line(error)
    return None


@contextmanager
def about_image(label: str, *, finished: int = 0, output: Path | None = None) -> Iterator[None]:
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
