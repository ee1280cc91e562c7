"""Every failed request as one JSON error: an HTTP status, a short kind, a one-line message.

A failure of the server's own (status 500) also logs its traceback on the ``salience.server``
logger, whether it happened in a route, in a worker, or anywhere else in the application.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from salience.errors import SalienceError, first_line
from salience.server.limits import (
    ASGIApp,
    Message,
    Receive,
    RequestRejectedError,
    Scope,
    Send,
    json_error,
)
from salience.server.watch import RequestCancelledError, TimeLimitExceededError

logger = logging.getLogger("salience.server")

MACHINE_ERRORS = (MemoryError, OSError, ImportError)
"""Errors of the server's machine (memory, files, packages): its operator's to fix, so 500."""


@dataclass(frozen=True)
class ApiError:
    """A failed request as the API reports it."""

    status: int
    kind: str
    message: str

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": message, "kind": kind, "status": status}``."""
        return {"error": self.message, "kind": self.kind, "status": self.status}


def classify(error: BaseException) -> ApiError:
    """The status, kind and message of an error raised while serving a request.

    What salience refuses (a :class:`~salience.errors.SalienceError`: an unknown method, layer
    or class, a target out of range, an image that cannot be read, a method the model cannot
    run) is the client's: 4xx (413 for an input over a size limit). The time limit is 504. The
    machine's errors (memory, files, packages) and anything else, a bug, are the server's own
    failure: 500.
    """
    from salience.adapters.base import GradientsUnavailableError
    from salience.adapters.layers import LayerError
    from salience.errors import TooLargeError
    from salience.images import ImageLoadError
    from salience.registry import UnknownNameError
    from salience.targets import TargetError

    message = first_line(error)
    if isinstance(error, RequestRejectedError):
        return ApiError(error.status, error.kind, message)
    if isinstance(error, TimeLimitExceededError):
        return ApiError(504, "time_limit", message)
    if isinstance(error, RequestCancelledError):
        return ApiError(409, "cancelled", message)
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (ImageLoadError, "bad_image"),
        (TargetError, "bad_target"),
        (LayerError, "bad_layer"),
        (UnknownNameError, "unknown_name"),
        (GradientsUnavailableError, "needs_gradients"),
        (TooLargeError, "too_large"),
    )
    statuses = {"bad_image": 422, "too_large": 413}
    for kind, name in kinds:
        if isinstance(error, kind):
            return ApiError(statuses.get(name, 400), name, message)
    if isinstance(error, SalienceError) and not isinstance(error, MACHINE_ERRORS):
        return ApiError(400, "bad_request", message)
    name = type(error).__name__
    detail = name if message == name else f"{name}: {message}"
    return ApiError(500, "internal", f"the server failed ({detail}); its log has the traceback")


def report(error: BaseException, context: str) -> ApiError:
    """:func:`classify` ``error``, and log its traceback when it is the server's own failure.

    Parameters
    ----------
    error : BaseException
        What a request raised.
    context : str
        Where it was raised, for the log (e.g. ``"POST /api/explain"`` or ``"job 1f2e…"``).
    """
    api_error = classify(error)
    if api_error.kind == "internal":
        logger.error("%s failed: %s", context, api_error.message, exc_info=error)
    return api_error


class InternalErrors:
    """ASGI middleware: an exception no route handled answers a JSON error, and is logged.

    Starlette's last-resort handler answers plain text and re-raises; this one answers
    ``{"error", "kind", "status"}`` (500 for the server's own failures) and logs the traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as error:  # every failure answers JSON
            api_error = report(error, f"{scope.get('method')} {scope.get('path')}")
            if started:  # too late for an answer: the server closes the connection
                return
            start, body = json_error(api_error.status, api_error.kind, api_error.message)
            await send(start)
            await send({"type": "http.response.body", "body": body})
