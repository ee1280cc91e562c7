"""Explanation requests as jobs: run in the worker pool, watched, kept (bounded) for download.

A job explains one image with several methods. Single-pass methods (gradients, gradient CAMs)
share one pass (``salience.api.explain_all``); each multi-pass method then runs on its own, so
the page sees each map as soon as it is done and a progress count while a slow one runs.

A queued job holds its upload as compressed bytes: the photo is decoded and prepared by the worker
that runs it, and dropped once its maps are drawn.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from salience.loading import LoadedModel
from salience.methods.sampling import PassPlan, planning
from salience.outputs import output_probabilities
from salience.server.errors import ApiError, classify, report
from salience.server.limits import RequestRejectedError
from salience.server.service import DisplayOptions, RenderedMap, render
from salience.server.watch import RequestCancelledError, Watch

QUEUED, RUNNING, DONE, FAILED, STOPPED = "queued", "running", "done", "failed", "stopped"


class Job:
    """One explanation request: an image, explainers built for it, and what they produced.

    Parameters
    ----------
    model : LoadedModel
        The served model.
    upload : ImageUpload
        The uploaded image, checked from its header but not decoded: the worker that runs the
        job prepares it for the model (with ``max_pixels``). A scan, signal or table is a
        :class:`~salience.server.data.DataJob`'s.
    explainers : sequence of Explainer
        Built on a :class:`~salience.server.watch.WatchedAdapter` watched by ``watch``.
    target, score
        As for ``salience.api.explain_all`` (``target`` already parsed).
    display : DisplayOptions
        How the server renders its overlay PNGs.
    watch : Watch
        The job's clock, cancel flag and pass counters.
    request : dict
        The request's parameters, echoed in the job's JSON.
    max_pixels : int
        Largest ``width * height`` the image may decode to.
    """

    def __init__(
        self,
        model: LoadedModel,
        upload: Any,
        explainers: Sequence[Any],
        *,
        target: Any,
        score: str,
        display: DisplayOptions,
        watch: Watch,
        request: dict[str, Any],
        max_pixels: int,
    ) -> None:
        self.id = secrets.token_hex(16)
        self.model = model
        self.explainers = list(explainers)
        self.target = target
        self.score = score
        self.display = display
        self.watch = watch
        self.request = request
        self.status = QUEUED
        self.error: ApiError | None = None
        self.maps: list[RenderedMap] = []
        self.view_png = b""
        self.max_pixels = max_pixels
        self.upload: Any = upload
        self._lock = threading.Lock()
        self._methods = {
            e.name: {
                "name": e.name,
                "status": QUEUED,
                "passes": 0,
                "total_passes": None,
                "seconds": None,
                "error": None,
            }
            for e in self.explainers
        }
        self._group_start: tuple[float, int] = (0.0, 0)
        self._plan = PassPlan()
        self.size = 0

    # -- running -----------------------------------------------------------------------------
    def run(self) -> None:
        """Compute every map; never raises (a failure is recorded in :attr:`error`)."""
        from salience.api import explain_all

        self.watch.start()
        self._set(status=RUNNING)
        try:
            self.watch.check()  # cancelled while queued (its client left): nothing is decoded
            tensor, draw = self._prepare()
            single = [e for e in self.explainers if e.single_pass]
            groups = ([single] if single else []) + [
                [e] for e in self.explainers if not e.single_pass
            ]
            for group in groups:
                self._start_group(group)
                with planning(self._plan):
                    results = explain_all(
                        group[0].adapter,
                        tensor,
                        group,
                        target=self.target,
                        score=self.score,
                        class_names=self.model.class_names,
                        output_kind=self.model.output_kind,
                    )
                for name, explanation in results.items():
                    explanation = explanation.with_names(self.model.class_names, self.model.name)
                    self._finish_method(name, draw(explanation))
            self._set(status=DONE)
        except Exception as error:  # the job reports every failure as JSON
            self._fail(report(error, f"job {self.id}"))
        finally:
            self.upload = None  # neither the upload nor the photo is kept with the maps
            self.size = self._kept_bytes()

    def _prepare(self) -> tuple[Any, Callable[[Any], list[RenderedMap]]]:
        """Decode the upload: the model's input, and how one explanation of it is drawn."""
        from salience.server.service import png_bytes

        assert self.upload is not None
        image = self.model.preset.prepare(self.upload.data, max_pixels=self.max_pixels)
        view = self.display.view(image)
        self.view_png = png_bytes(view.image)
        probabilities = self._probabilities(image.tensor)

        def draw(explanation: Any) -> list[RenderedMap]:
            return [
                render(explanation, k, view, self.display, probabilities)
                for k in range(explanation.targets.shape[1])
            ]

        return image.tensor, draw

    def _kept_bytes(self) -> int:
        """The memory of what the finished job keeps for download."""
        return len(self.view_png) + sum(
            len(data) for rendered in self.maps for data, _ in rendered.files.values()
        )

    def _probabilities(self, tensor: Any) -> dict[int, float]:
        """Each output's probability of the first input (none for a regression: its maps show
        no percentage)."""
        logits = self.model.adapter.forward(tensor)[0].float()
        probabilities = output_probabilities(logits, self.model.output_kind)
        return {} if probabilities is None else dict(enumerate(probabilities.tolist()))

    def _start_group(self, group: Sequence[Any]) -> None:
        with self._lock:
            self._group_start = (time.monotonic(), self.watch.counters()[0])
            self._plan = PassPlan()
            for explainer in group:
                self._methods[explainer.name]["status"] = RUNNING

    def _finish_method(self, name: str, rendered: list[RenderedMap]) -> None:
        with self._lock:
            started, passes = self._group_start
            state = self._methods[name]
            done = self.watch.counters()[0] - passes
            state.update(
                status=DONE,
                seconds=round(time.monotonic() - started, 3),
                passes=done,
                total_passes=done,
            )
            self.maps.extend(rendered)

    def _running(self) -> list[str]:
        return [name for name, state in self._methods.items() if state["status"] == RUNNING]

    def _fail(self, error: ApiError) -> None:
        with self._lock:
            self.error = error
            self.status = STOPPED if error.kind in ("time_limit", "cancelled") else FAILED
            for state in self._methods.values():
                if state["status"] in (QUEUED, RUNNING):
                    state.update(status=self.status, error=error.message)

    def abandon(self) -> None:
        """Mark a job that never ran (its worker queue was dropped) as stopped."""
        if self.status == QUEUED:
            self.upload = None
            self._fail(classify(RequestCancelledError("the server stopped before the job started")))

    def _set(self, **values: Any) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self, key, value)

    @property
    def finished(self) -> bool:
        """Whether the job stopped, successfully or not."""
        return self.status in (DONE, FAILED, STOPPED)

    # -- reporting ---------------------------------------------------------------------------
    def snapshot(self, base: str = "/api/jobs") -> dict[str, Any]:
        """The job as JSON: status, progress per method, the finished maps with their files."""
        passes, samples = self.watch.counters()
        with self._lock:
            methods = [dict(state) for state in self._methods.values()]
            started, group_passes = self._group_start
            chunked, planned = self._plan.counts()
            for state in methods:
                if state["status"] == RUNNING:
                    state["passes"] = passes - group_passes
                    state["seconds"] = round(time.monotonic() - started, 3)
                    # the passes so far, less the chunked ones done, plus all those announced
                    known = planned > 0 and len(self._running()) == 1
                    state["total_passes"] = state["passes"] - chunked + planned if known else None
            url = f"{base}/{self.id}"
            maps = [
                {
                    **rendered.meta,
                    "files": {name: f"{url}/maps/{i}/{name}" for name in rendered.files},
                }
                for i, rendered in enumerate(self.maps)
            ]
            return {
                "id": self.id,
                "status": self.status,
                "model": self.model.name,
                "request": self.request,
                "elapsed": round(self.watch.elapsed(), 3),
                "time_limit": self.watch.time_limit,
                "passes": passes,
                "samples": samples,
                "image": f"{url}/image.png" if self.view_png else None,
                "methods": methods,
                "maps": maps,
                "error": None if self.error is None else self.error.body(),
            }

    def file(self, index: int, name: str) -> tuple[bytes, str]:
        """One file of one finished map.

        Raises
        ------
        RequestRejectedError
            404 when the job has no such map or file.
        """
        with self._lock:
            if 0 <= index < len(self.maps) and name in self.maps[index].files:
                return self.maps[index].files[name]
        raise RequestRejectedError(
            404, "not_found", f"job {self.id} has no map {index} file {name!r}"
        )


class JobStore:
    """The jobs the server knows, and a bounded memory of the finished ones.

    How many may be pending is the server's :class:`~salience.server.limits.PendingBudget`'s
    business: a job is added once the budget admitted it.

    Parameters
    ----------
    max_finished : int
        Finished jobs kept for download; the oldest are forgotten first.
    max_bytes : int
        Total size of the files of the finished jobs kept.
    """

    def __init__(self, max_finished: int = 32, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_finished = max_finished
        self.max_bytes = max_bytes
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        """Register a new job; call :meth:`done` once its worker ran it (or dropped it)."""
        with self._lock:
            self._jobs[job.id] = job

    def done(self, job: Job) -> None:
        """A job's worker is finished with it: forget the oldest finished jobs."""
        job.abandon()
        self.prune()

    def jobs(self) -> list[Job]:
        """The jobs known now, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; 404 when unknown or forgotten."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise RequestRejectedError(
                404,
                "not_found",
                f"no job {job_id[:40]!r}: it never existed or was forgotten to free memory; "
                "send the request again",
            )
        return job

    def prune(self) -> None:
        """Forget the oldest finished jobs beyond the count and memory bounds."""
        with self._lock:
            finished = [job for job in self._jobs.values() if job.finished]
            total = sum(job.size for job in finished)
            while finished and (len(finished) > self.max_finished or total > self.max_bytes):
                oldest = finished.pop(0)
                total -= oldest.size
                del self._jobs[oldest.id]

    def cancel_all(self) -> None:
        """Ask every unfinished job to stop (the server is shutting down)."""
        with self._lock:
            for job in self._jobs.values():
                if not job.finished:
                    job.watch.cancel()

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
