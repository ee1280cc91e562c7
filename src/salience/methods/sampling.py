"""Running a gradient method over many perturbed copies of the inputs, in chunks."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
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
    """Yield ``(rows, fn(rows))`` for consecutive chunks of ``range(total)``; show progress.

    Under another bar, on an output that is not a terminal (a log, a pipe), the bar is not shown:
    a nested bar moves the cursor up with escape codes that such an output prints as they are.
    """
    nested = bool(getattr(tqdm, "_instances", ())) and not _is_terminal(sys.stderr)
    bar = tqdm(total=total, desc=description, disable=not progress or nested, leave=False)
    try:
        for rows in chunks(total, chunk_size):
            yield rows, fn(rows)
            bar.update(rows.stop - rows.start)
    finally:
        bar.close()


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
