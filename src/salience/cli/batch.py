"""``salience batch``: a folder or data set explained, resumably, locally or on Ray."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from salience.cli.arguments import (
    display_from_args,
    load_options_from_args,
    method_names,
    method_values,
)


def run_batch(args: argparse.Namespace) -> int:
    """``salience batch``: explain a folder or data set, resumably, locally or on Ray."""
    from salience.runner import JobSpec, make_engine, run_job
    from salience.runner.inputs import is_feature_table

    if is_feature_table(args.input):
        from salience.cli.rows import run_batch_rows

        return run_batch_rows(args)
    options = load_options_from_args(args)
    values = method_values(args)
    values.pop("progress")
    spec = JobSpec(
        model=args.model,
        load_options=options,
        methods=tuple(method_names(args.method)),
        options=values,
        target=args.target,
        score=args.score,
        auc=args.auc,
        pixels_per_step=args.step,
        display=display_from_args(args),
    )
    engine = make_engine(
        args.engine, args.workers, address=args.ray_address, chunk_size=args.chunk_size
    )
    try:
        with sigterm_as_interrupt():
            summary = run_job(spec, args.input, args.output, engine=engine, progress=not args.quiet)
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        print(
            f"salience: {'terminated' if terminated else 'interrupted'}; the finished images "
            f"are kept in {args.output}/: run the same command again to resume",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM if terminated else 130
    print(
        f"{summary.total} images: {summary.explained} explained now "
        f"({summary.images_per_second:.2f} images/s), {summary.skipped} finished before, "
        f"{summary.failed} failed"
    )
    print(f"wrote {', '.join(path.name for path in summary.written)} to {summary.output}/")
    for path, error in summary.failures:
        print(f"failed: {path}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``), handled as Ctrl-C: the job stops its workers and keeps its work."""


def _raise_terminated(_signum: int, _frame: Any) -> None:
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread, as Ctrl-C raises
    ``KeyboardInterrupt``: the engine's ``finally`` ends the workers instead of orphaning them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
