"""``/docs`` without a network: the OpenAPI description drawn as one self-contained HTML page.

FastAPI's default ``/docs`` loads Swagger UI from a CDN, which is blank offline (and no package
here ships its JavaScript). This page lists every operation of the schema — method, path,
summary, parameters and request body — with inline styles only and no script; the full schema
stays at ``/openapi.json``.
"""

from __future__ import annotations

import html
from typing import Any

STYLE = (
    "body{font:14px system-ui,sans-serif;margin:1.5em;max-width:60em;color:#222}"
    "h2{font-size:1.05em;margin:1.2em 0 .2em}code{background:#f3f3f3;padding:0 .25em}"
    ".method{display:inline-block;min-width:4.5em;font-weight:bold}p{margin:.2em 0}"
)


def api_page(schema: dict[str, Any]) -> str:
    """The HTML page of an OpenAPI ``schema`` (what ``app.openapi()`` returns)."""
    info = schema.get("info", {})
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>",
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>",
        f"<p>{html.escape(info.get('summary') or info.get('description') or '')}</p>",
        "<p>The machine-readable schema: <a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            parts.append(_operation(method, path, operation))
    parts.append("</body></html>")
    return "".join(parts)


def _operation(method: str, path: str, operation: dict[str, Any]) -> str:
    summary = html.escape(operation.get("summary") or "")
    lines = [
        f"<h2><span class='method'>{html.escape(method.upper())}</span>"
        f"<code>{html.escape(path)}</code></h2><p>{summary}</p>"
    ]
    parameters = [
        f"<code>{html.escape(p['name'])}</code> ({html.escape(p.get('in', ''))})"
        for p in operation.get("parameters", [])
    ]
    if parameters:
        lines.append(f"<p>parameters: {', '.join(parameters)}</p>")
    content = operation.get("requestBody", {}).get("content", {})
    if content:
        lines.append(f"<p>body: {html.escape(', '.join(content))}</p>")
    return "".join(lines)
