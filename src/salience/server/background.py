"""Run the server in a background thread of this process (notebooks, tests, the docs screenshot)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STARTUP_SECONDS = 30.0


@contextmanager
def serving(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread for the duration of the block.

    Parameters
    ----------
    app : ASGI application
        E.g. ``salience.server.create_app()``.
    host : str
        Address to listen on; this machine only by default.
    port : int
        Port; 0 picks a free one.

    Yields
    ------
    str
        The base URL, e.g. ``http://127.0.0.1:53411``.
    """
    import uvicorn

    from salience.server.protocol import http_protocol

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    bound = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", http=http_protocol())
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="salience-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            listener.close()
            raise RuntimeError(f"the server did not start on {host}:{bound}")
        time.sleep(0.05)
    try:
        yield f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
