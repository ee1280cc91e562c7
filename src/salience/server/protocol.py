"""uvicorn's HTTP protocol, answering a request it cannot parse with the API's JSON error.

uvicorn refuses a malformed request line or header (``Content-Length: -5``) itself, before the
application sees it, with a plain-text 400. :func:`http_protocol` is the protocol uvicorn would
pick, with that answer replaced by ``{"error", "kind", "status"}``; pass it as ``http=`` to
``uvicorn.run`` or ``uvicorn.Config`` (``salience serve`` does), or name it on uvicorn's command
line: ``--http salience.server.protocol:JsonErrorHTTPProtocol``.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from salience.server.limits import json_error

BAD_HTTP_MESSAGE = (
    "the request is not valid HTTP/1.1 (a malformed request line, header or Content-Length); "
    "send a well-formed request"
)


def _send_json_400(self: Any, _msg: str) -> None:
    """Answer 400 with the JSON error and close the connection (replaces uvicorn's text)."""
    cycle = getattr(self, "cycle", None)
    if cycle is not None and cycle.response_started:  # mid-answer: no room for another one
        self.transport.close()
        return
    start, body = json_error(400, "bad_http", BAD_HTTP_MESSAGE)
    headers = [*self.server_state.default_headers, *start["headers"]]
    head = b"HTTP/1.1 400 Bad Request\r\n" + b"".join(
        name + b": " + value + b"\r\n" for name, value in headers
    )
    self.transport.write(head + b"\r\n" + body)
    self.transport.close()


@cache
def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's automatic HTTP/1.1 protocol (httptools if installed, else h11), JSON 400s."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class JsonErrorHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's HTTP/1.1 protocol whose 400 answer is the API's JSON error."""

        send_400_response = _send_json_400

    return JsonErrorHTTPProtocol


def __getattr__(name: str) -> Any:
    if name == "JsonErrorHTTPProtocol":  # for uvicorn's --http, which imports it by name
        return http_protocol()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
