"""The Ray engine: actors on a Ray cluster (or a local Ray instance), one per CPU by default.

Needs ``pip install 'salience[ray]'``. Each actor takes one CPU, runs torch with one thread and
opens the model once from the job's spec (a string and options: nothing unpicklable travels).
Images travel as bytes in chunks of ``chunk_size``, at most two chunks per actor in flight, and
results stream back to the job, which writes them into the output folder on this machine: the
workers need neither the input files nor the output folder. The model must open on every node:
a bundled model, a factory importable there, or a file at the same path.

If Ray is already initialized (``ray.init(...)`` by the caller) that cluster is used and left
running; otherwise the engine connects to ``address`` (or starts a local instance) and shuts
down after the job, also when it is interrupted (Ctrl-C) or terminated (SIGTERM: the job ends
with status 143 once Ray is down). A local instance also gets a watcher
(:mod:`salience.runner.reaper`) that ends Ray's processes if the job is killed outright.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from salience.errors import InvalidInputError, MissingPackageError
from salience.runner import reaper
from salience.runner.local import WorkerError
from salience.runner.spec import JobSpec
from salience.runner.work import ItemResult, Task

DEFAULT_CHUNK_SIZE = 4
IN_FLIGHT_PER_ACTOR = 2


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise MissingPackageError(
            f"the ray engine needs Ray ({error}); pip install 'salience[ray]'"
        ) from error
    return ray


def _exit_on_signal(signum: int, _frame: Any) -> None:
    """End the process as the signal would (status 128 + signal), but through ``SystemExit``,
    so that ``finally`` blocks shut down what the job started."""
    raise SystemExit(128 + signum)


class ItemActor:
    """A Ray actor: one torch thread, one :class:`~salience.runner.work.ItemWorker`."""

    def __init__(self, spec: JobSpec) -> None:
        import torch

        from salience.runner.work import ItemWorker

        torch.set_num_threads(1)
        self.worker = ItemWorker(spec)

    def process(self, tasks: list[Task]) -> list[ItemResult]:
        """Explain a chunk of images (together where the methods allow)."""
        return self.worker.process_all(tasks)


class RayEngine:
    """Runs items on Ray actors.

    Parameters
    ----------
    workers : int, optional
        Actors; default: the cluster's CPUs.
    address : str, optional
        The cluster to connect to when Ray is not initialized yet (``ray.init(address)``);
        default: ``RAY_ADDRESS``, else a local instance.
    chunk_size : int
        Images per actor call.
    """

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if workers is not None and not (isinstance(workers, int) and workers >= 1):
            raise InvalidInputError(f"workers must be an int >= 1, got {workers!r}")
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise InvalidInputError(f"the chunk size must be an int >= 1, got {chunk_size!r}")
        import_ray()
        self.workers = workers
        self.address = address
        self.chunk_size = chunk_size

    def describe(self) -> str:
        """The engine in a few words, for the job's messages."""
        count = f"{self.workers} actors" if self.workers else "one actor per CPU"
        return f"ray engine, {count}, chunks of {self.chunk_size}"

    def results(self, spec: JobSpec, tasks: Iterable[Task]) -> Iterator[ItemResult]:
        """Results of ``tasks`` as their chunks finish (in any order)."""
        ray = import_ray()
        if ray.is_initialized():  # the caller's cluster: used, and left running
            yield from self._run(ray, spec, tasks)
            return
        main = threading.current_thread() is threading.main_thread()  # signals: main only
        handler = signal.getsignal(signal.SIGTERM) if main else None
        before = reaper.children(os.getpid())
        watcher: reaper.Reaper | None = None
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            if main:  # after ray.init, whose own handler aborts the process
                signal.signal(signal.SIGTERM, _exit_on_signal)
            if self.address is None and not os.environ.get("RAY_ADDRESS"):
                watcher = reaper.Reaper(reaper.children(os.getpid()) - before)
            yield from self._run(ray, spec, tasks)
        finally:
            ray.shutdown()
            if watcher is not None:
                watcher.close()
            if main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if handler is None else handler)

    def _run(self, ray: Any, spec: JobSpec, tasks: Iterable[Task]) -> Iterator[ItemResult]:
        actors: list[Any] = []
        try:
            count = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            remote = ray.remote(num_cpus=1)(ItemActor)
            actors = [remote.remote(spec) for _ in range(count)]
            yield from self._stream(ray, actors, iter(tasks))
        finally:
            for actor in actors:
                ray.kill(actor)

    def _stream(self, ray: Any, actors: list[Any], source: Iterator[Task]) -> Iterator[ItemResult]:
        load = dict.fromkeys(range(len(actors)), 0)
        running: dict[Any, int] = {}
        exhausted = False
        while True:
            while not exhausted:
                free = min(load, key=load.__getitem__)
                if load[free] >= IN_FLIGHT_PER_ACTOR:
                    break
                chunk = list(islice(source, self.chunk_size))
                if not chunk:
                    exhausted = True
                    break
                running[actors[free].process.remote(chunk)] = free
                load[free] += 1
            if not running:
                return
            (ready,), _ = ray.wait(list(running), num_returns=1)
            load[running.pop(ready)] -= 1
            try:
                results = ray.get(ready)
            except Exception as error:
                message = str(error).strip().splitlines()
                raise WorkerError(
                    f"a Ray worker failed: {message[-1] if message else type(error).__name__}; "
                    "re-run the same command to resume"
                ) from error
            yield from results
