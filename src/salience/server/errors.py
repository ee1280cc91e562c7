"""Every failed request as one JSON error: an HTTP status, a short kind, a one-line message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from salience.server.limits import RequestRejectedError
from salience.server.watch import RequestCancelledError, TimeLimitExceededError


@dataclass(frozen=True)
class ApiError:
    """A failed request as the API reports it."""

    status: int
    kind: str
    message: str

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": message, "kind": kind, "status": status}``."""
        return {"error": self.message, "kind": self.kind, "status": self.status}


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def classify(error: BaseException) -> ApiError:
    """The status, kind and message of an error raised while serving a request.

    Bad input (an unknown method, layer or class, a target out of range, an image that cannot be
    read, a method the model cannot run) is the client's: 4xx. The time limit is 504; anything
    else is the server's own failure: 500.
    """
    from salience.adapters.base import GradientsUnavailableError
    from salience.adapters.layers import LayerError
    from salience.images import ImageLoadError
    from salience.registry import UnknownNameError
    from salience.targets import TargetError

    message = _one_line(error)
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
        (ValueError, "bad_request"),
    )
    for kind, name in kinds:
        if isinstance(error, kind):
            return ApiError(422 if name == "bad_image" else 400, name, message)
    return ApiError(500, "internal", f"the server failed: {type(error).__name__}: {message}")
