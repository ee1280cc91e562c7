"""Running a gradient method over many perturbed copies of the inputs, in chunks."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from salience.errors import InvalidInputError


def chunks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    if size < 1:
        raise InvalidInputError(f"chunk_size must be >= 1, got {size}")
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


class PassPlan:
    """The chunked model passes the methods run under :func:`planning` announce and finish.

    :func:`map_in_chunks` announces its passes (one per chunk) before the first and counts each
    one done, so a progress display can say "N of M passes" where a method knows its total
    (the server's jobs). Thread-safe: a display reads it while the method runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planned = 0
        self._done = 0

    def plan(self, passes: int) -> None:
        """Announce ``passes`` more passes."""
        with self._lock:
            self._planned += int(passes)

    def step(self) -> None:
        """Count one announced pass done."""
        with self._lock:
            self._done += 1

    def counts(self) -> tuple[int, int]:
        """``(done, planned)`` so far."""
        with self._lock:
            return self._done, self._planned


_PLAN: ContextVar[PassPlan | None] = ContextVar("salience_pass_plan", default=None)


@contextmanager
def planning(plan: PassPlan) -> Iterator[PassPlan]:
    """Report the chunked passes of the methods run inside (in this thread) to ``plan``."""
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator with an explicit seed (None: a fresh one); the global RNG is untouched."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def map_in_chunks(
    total: int,
    fn: Callable[[slice], Tensor],
    chunk_size: int,
    *,
    progress: bool = False,
    description: str = "",
) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(rows, fn(rows))`` for consecutive chunks of ``range(total)``; show progress
    (a bar, and the :class:`PassPlan` of :func:`planning` where one is set).

    Under another bar, on an output that is not a terminal (a log, a pipe), the bar is not shown:
    a nested bar moves the cursor up with escape codes that such an output prints as they are.
    """
    nested = bool(getattr(tqdm, "_instances", ())) and not _is_terminal(sys.stderr)
    bar = tqdm(total=total, desc=description, disable=not progress or nested, leave=False)
    plan = _PLAN.get()
    if plan is not None and chunk_size >= 1:
        plan.plan(math.ceil(total / chunk_size))
    try:
        for rows in chunks(total, chunk_size):
            yield rows, fn(rows)
            bar.update(rows.stop - rows.start)
            if plan is not None:
                plan.step()
    finally:
        bar.close()


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
