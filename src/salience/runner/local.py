"""The local engine: a pool of worker processes on this machine, one per core by default.

Workers are started with ``spawn`` (they inherit the environment, ``THP_MEM_ALLOC_ENABLE``
included), run torch with ONE thread each (``torch.set_num_threads(1)``: N single-threaded
workers beat N threads per image on small CPUs and keep the maps independent of the worker
count), ignore Ctrl-C (the job stops them), open the model once, and leave when the job's
process is gone. Images travel in chunks, which a worker explains together where the methods
allow (:func:`~salience.runner.work.group_size`; fewer per chunk when a small job would
otherwise leave workers idle); at most two chunks per worker are in flight, so the job reads
images only shortly before they are needed.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Iterable, Iterator, Sized
from itertools import islice
from typing import Any

from salience.errors import InvalidInputError, SalienceError
from salience.runner.spec import JobSpec
from salience.runner.work import ItemResult, Task, group_size

IN_FLIGHT_PER_WORKER = 2
_POLL_SECONDS = 1.0


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class WorkerError(SalienceError, RuntimeError):
    """A worker could not start or died; the job stops (re-running it resumes)."""


class LocalEngine:
    """Runs items in worker processes on this machine.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default: one per core.
    """

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and not (isinstance(workers, int) and workers >= 1):
            raise InvalidInputError(f"workers must be an int >= 1, got {workers!r}")
        self.workers = workers or available_cores()

    def describe(self) -> str:
        """The engine in a few words, for the job's messages."""
        return f"local engine, {self.workers} worker process{'es' if self.workers > 1 else ''}"

    def chunk_size(self, spec: JobSpec, tasks: Iterable[Task]) -> int:
        """Images per chunk: the job's :func:`~salience.runner.work.group_size`, but no more
        than an even share of ``tasks`` (when they have a length) among the workers."""
        size = group_size(spec)
        if isinstance(tasks, Sized):
            size = min(size, max(1, -(-len(tasks) // self.workers)))
        return size

    def results(self, spec: JobSpec, tasks: Iterable[Task]) -> Iterator[ItemResult]:
        """Results of ``tasks`` as they finish (in any order)."""
        size = self.chunk_size(spec, tasks)
        context = multiprocessing.get_context("spawn")
        inbox: Any = context.Queue()
        outbox: Any = context.Queue()
        processes = [
            context.Process(target=_serve, args=(spec, inbox, outbox), daemon=True)
            for _ in range(self.workers)
        ]
        for process in processes:
            process.start()
        finished = False
        try:
            pending, source = 0, iter(tasks)
            while True:
                while pending < IN_FLIGHT_PER_WORKER * self.workers:
                    chunk = list(islice(source, size))
                    if not chunk:
                        break
                    inbox.put(chunk)
                    pending += 1
                if pending == 0:
                    break
                results = _next_results(outbox, processes)
                pending -= 1
                yield from results
            for _ in processes:
                inbox.put(None)
            finished = True
        finally:
            for process in processes:
                process.join(timeout=5.0 if finished else 0.0)
                if process.is_alive():
                    process.terminate()
                    process.join()
            inbox.cancel_join_thread()
            inbox.close()
            outbox.close()


def _next_results(outbox: Any, processes: list[Any]) -> list[ItemResult]:
    """The next chunk's results; raises when a worker reports an error or dies."""
    while True:
        try:
            result = outbox.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            dead = [p for p in processes if not p.is_alive()]
            if dead:
                raise WorkerError(
                    f"a worker process died (exit code {dead[0].exitcode}; out of memory?); "
                    "re-run the same command to resume"
                ) from None
            continue
        if isinstance(result, str):
            raise WorkerError(result)
        return result


def _serve(spec: JobSpec, inbox: Any, outbox: Any) -> None:
    """A worker process: one torch thread, the model opened once, chunks of tasks until told
    to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from salience.runner.work import ItemWorker

    torch.set_num_threads(1)
    try:
        worker = ItemWorker(spec)
    except Exception as error:  # reported to the job, which stops with it
        outbox.put(f"a worker could not open the model {spec.model}: {error}")
        return  # the queue is flushed before the process ends
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_leave_with, args=(parent,), daemon=True).start()
    while True:
        try:
            chunk = inbox.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            continue
        if chunk is None:
            return
        outbox.put(worker.process_all(chunk))


def _leave_with(parent: Any) -> None:
    """End this worker as soon as the job's process is gone (killed outright): wherever the
    worker is, also inside a read of a chunk the dying job wrote only in part, which would
    block for ever. A worker writes no file (the job does), so nothing is left half-done."""
    parent.join()
    os._exit(1)
