"""Run a batch job: find the inputs, skip what is finished, explain the rest on an engine, write.

The job checks everything it can before any work (the model opens here once, the methods are
built on it, labels are matched to its classes), then hands the unfinished items to the engine
and writes each result as it arrives (a few writer threads, since every atomic write waits for
the disk), and at the end the results table and the index page from all the items' records.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from salience.errors import InvalidInputError
from salience.runner.index import write_index
from salience.runner.inputs import collect_inputs, label_index
from salience.runner.manifest import JobFolder
from salience.runner.results import table_rows, write_tables
from salience.runner.spec import JobSpec
from salience.runner.work import FAILED, ItemResult, ItemWorker, Task, read_task
from salience.targets import TopK

ENGINES = ("local", "ray")
WRITER_THREADS = 4
MAX_UNWRITTEN = 16


class Engine(Protocol):
    """Runs tasks somewhere and streams their results back, in any order."""

    name: str

    def describe(self) -> str:
        """The engine in a few words."""
        ...

    def results(self, spec: JobSpec, tasks: Iterable[Task]) -> Iterator[ItemResult]:
        """The results of ``tasks`` as they finish."""
        ...


def make_engine(
    name: str,
    workers: int | None = None,
    *,
    address: str | None = None,
    chunk_size: int | None = None,
) -> Engine:
    """The engine called ``name`` (``local`` or ``ray``)."""
    if name == "local":
        from salience.runner.local import LocalEngine

        if address is not None or chunk_size is not None:
            raise InvalidInputError("an address and a chunk size are options of the ray engine")
        return LocalEngine(workers)
    if name == "ray":
        from salience.runner.ray_engine import DEFAULT_CHUNK_SIZE, RayEngine

        return RayEngine(workers, address=address, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE)
    raise InvalidInputError(f"unknown engine {name!r}; choose {' or '.join(ENGINES)}")


@dataclass(frozen=True)
class JobSummary:
    """What a run did.

    Attributes
    ----------
    total : int
        Inputs.
    skipped : int
        Items finished by an earlier run under the same settings.
    explained : int
        Items explained by this run (failed ones included).
    failed : int
        Items whose record says failed, after this run.
    seconds : float
        Wall time of this run's explaining and writing.
    output : Path
        The output folder.
    written : list of Path
        The table and the index page.
    failures : list of (str, str)
        Each failed item's path and why it failed, in input order.
    """

    total: int
    skipped: int
    explained: int
    failed: int
    seconds: float
    output: Path
    written: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Items explained and written per second by this run."""
        return self.explained / self.seconds if self.seconds > 0 else 0.0


def run_job(
    spec: JobSpec,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    engine: Engine | str = "local",
    workers: int | None = None,
    progress: bool = True,
) -> JobSummary:
    """Explain every image of ``source`` with ``spec`` into the folder ``output``, resumably.

    Parameters
    ----------
    spec : JobSpec
        The model, methods and options.
    source : path
        A folder, a glob pattern or a CSV/Parquet manifest
        (:func:`salience.runner.inputs.collect_inputs`).
    output : path
        The job's folder (:mod:`salience.runner.manifest`); a re-run into the same folder skips
        the items finished under the same settings.
    engine : Engine or {"local", "ray"}
        Where the work runs.
    workers : int, optional
        Workers of an engine given by name; default: one per core (per CPU of the cluster).
    progress : bool
        Show a progress bar (rate and time left).
    """
    runner = make_engine(engine, workers) if isinstance(engine, str) else engine
    items = collect_inputs(source)
    spec = spec.with_absolute_paths()
    checked = _checked_worker(spec)
    class_names = checked.loaded.class_names
    labels = {item.key: label_index(item.label, class_names, item) for item in items}
    folder = JobFolder(output)
    fingerprint = spec.fingerprint()
    with folder.lock():
        folder.remove_temporaries()
        folder.write_job({**spec.describe(), "fingerprint": fingerprint})
        todo = [item for item in items if not folder.is_finished(item, fingerprint)]
        if progress:
            tqdm.write(
                f"{len(items)} images: {len(items) - len(todo)} finished before, "
                f"{len(todo)} to explain ({runner.describe()})"
            )
        start = time.perf_counter()
        _explain(runner, spec, folder, todo, fingerprint, progress)
        seconds = time.perf_counter() - start
        records = {item.key: folder.read_record(item.key) for item in items}
        rows = table_rows(items, records, labels, class_names, methods=spec.methods, auc=spec.auc)
        written = write_tables(folder.root, rows)
        written.append(
            write_index(
                folder.root,
                rows,
                methods=spec.methods,
                model=checked.loaded.name,
                auc=spec.auc,
                captions={key: (r or {}).get("captions", {}) for key, r in records.items()},
            )
        )
    failures = [(row["path"], row["error"] or "") for row in rows if row["status"] == FAILED]
    return JobSummary(
        len(items),
        len(items) - len(todo),
        len(todo),
        len(failures),
        seconds,
        folder.root,
        written,
        failures,
    )


def _checked_worker(spec: JobSpec) -> ItemWorker:
    """An item worker built here: the model, methods and target fail before any work (the
    colormap did when the spec's display was made)."""
    worker = ItemWorker(spec)
    if spec.auc and isinstance(worker.target, TopK):
        raise InvalidInputError(
            "deletion and insertion follow one class per image: drop the AUCs or explain one "
            "target (not top-K)"
        )
    return worker


class LazyTasks:
    """The tasks of ``items``, each file read only when the engine takes it; their count is
    known up front (an engine shares them among its workers by it)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Task]:
        return (read_task(item) for item in self.items)


def _explain(
    engine: Engine,
    spec: JobSpec,
    folder: JobFolder,
    todo: list[Any],
    fingerprint: str,
    progress: bool,
) -> None:
    """Run the items on the engine; write each result as it comes (record last)."""
    if not todo:
        return
    by_key = {item.key: item for item in todo}
    tasks = LazyTasks(todo)
    failed = 0
    with (
        ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="salience-writer") as writers,
        tqdm(total=len(todo), unit="image", desc="batch", disable=not progress) as bar,
        closing(engine.results(spec, tasks)) as results,
    ):
        unwritten: deque[Future[dict[str, Any]]] = deque()

        def settle(wait: bool) -> None:
            nonlocal failed
            while unwritten and (wait or unwritten[0].done() or len(unwritten) > MAX_UNWRITTEN):
                record = unwritten.popleft().result()
                failed += record["status"] == FAILED
                bar.update()
                if failed:
                    bar.set_postfix_str(f"{failed} failed", refresh=False)

        for result in results:
            unwritten.append(
                writers.submit(folder.write_item, by_key[result.key], result, fingerprint)
            )
            settle(wait=False)
        settle(wait=True)
