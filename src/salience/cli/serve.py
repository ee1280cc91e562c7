"""``salience serve``: the web viewer and the HTTP API."""

from __future__ import annotations

import argparse
import sys

from salience.errors import InvalidInputError, MissingPackageError


def run_serve(args: argparse.Namespace) -> int:
    """``salience serve``: open the models once, then serve the page and the API."""
    try:
        import uvicorn

        from salience.server.app import create_app
        from salience.server.protocol import http_protocol
    except ImportError as error:
        raise MissingPackageError(
            f"salience serve needs FastAPI and uvicorn ({error}); pip install 'salience[server]'"
        ) from error
    from salience.loading import open_model
    from salience.server.limits import Limits

    names = [
        name.strip()
        for given in args.model or ["efficientnet_lite0"]
        for name in given.split(",")
        if name.strip()
    ]
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be in 1..65535, got {args.port}")
    limits = Limits(
        max_upload_bytes=max(1, int(args.max_upload_mb * 1024 * 1024)),
        max_pixels=args.max_pixels,
        time_limit=args.time_limit,
        max_pending_bytes=max(1, int(args.max_pending_mb * 1024 * 1024)),
        max_values=args.max_values,
        max_rows=args.max_rows,
    )
    models = [open_model(name) for name in dict.fromkeys(names)]
    app = create_app(models, limits=limits, workers=args.workers)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"salience: warning: listening on {args.host}; anyone who can reach this address can "
            "use the server (it has no authentication)",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    served = ", ".join(model.name for model in models)
    print(f"salience: serving {served} at http://{host}:{args.port}/ (API docs at /docs)")
    sys.stdout.flush()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=http_protocol())
    return 0
