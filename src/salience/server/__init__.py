"""The web viewer and HTTP API: ``salience serve``, or ``create_app(models)`` for any ASGI server.

Needs the ``server`` extra: ``pip install 'salience[server]'``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Limits", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from salience.server.app import create_app

        return create_app
    if name == "Limits":
        from salience.server.limits import Limits

        return Limits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
