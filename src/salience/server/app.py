"""The HTTP API and the viewer page: ``create_app(models)`` returns a FastAPI application.

Endpoints (OpenAPI docs at ``/docs``):

- ``GET /`` the viewer page; ``GET /static/{name}`` its script and style sheet
- ``GET /api/models``, ``/api/models/{model}/classes``, ``/api/models/{model}/layers``,
  ``/api/methods``, ``/api/colormaps``, ``/api/colormaps/diverging``, ``/api/limits``
- ``POST /api/predict`` an image, a scan or a signal → the top-5 classes (a table: of each row)
- ``POST /api/explain`` an image, methods, target, options → the maps (waits for them); the
  upload may also be a scan (``.nii``, ``.nii.gz``, ``.npy``), a signal (``.npy``, ``.csv``) or
  rows of features (``.csv``), by its file name (:mod:`salience.server.data`)
- ``POST /api/jobs`` the same, answered at once; ``GET /api/jobs/{id}`` its progress and maps;
  ``DELETE /api/jobs/{id}`` cancels it
- ``GET /api/jobs/{id}/image.png``, ``/api/jobs/{id}/maps/{i}/{overlay.png|map.npy|display.f32}``
  (a scan's map also ``map.nii.gz`` and ``slices/{axial}.png``)
- ``GET /api/jobs/{id}/agreement`` pairwise agreement of the job's maps
- ``POST /api/sanity`` an image → the randomization test over the model's top blocks

Every rejected or failed request gets a JSON error ``{"error", "kind", "status"}`` (a failure of
the server's own, 500, also logs its traceback on the ``salience.server`` logger). Nothing in a
request names a file: models are the ones opened at start, static files are read into memory at
start, results are looked up by a random id.

An upload stays compressed until a worker starts on it; the requests waiting for a worker are
bounded in number and in the memory of their images (``Limits.max_pending_bytes``). A client
that hangs up on ``POST /api/explain`` cancels its request: it stops at its next model pass.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Annotated, Any, Literal

from salience.errors import InvalidInputError, MissingPackageError

try:
    from fastapi import Depends, FastAPI, File, Form, Path, Query, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException
except ImportError as error:  # pragma: no cover - depends on the environment
    raise MissingPackageError(
        f"the salience server needs FastAPI ({error}); pip install 'salience[server]'"
    ) from error

from salience.images import PreparedImage
from salience.loading import LoadedModel
from salience.server.data import (
    ROWS,
    DataJob,
    DataUpload,
    is_data_upload,
    read_data_upload,
)
from salience.server.errors import ApiError, InternalErrors, report
from salience.server.form import ExplainForm, FeaturesField, explain_form, plan_request
from salience.server.jobs import Job, JobStore
from salience.server.limits import (
    BodySizeLimit,
    ImageUpload,
    Limits,
    PendingBudget,
    RequestRejectedError,
    check_image_upload,
)
from salience.server.sanity import SanityForm, check_methods, run_sanity
from salience.server.service import (
    ModelPool,
    agreement_of,
    colormap_tables,
    diverging_colormaps,
    layer_catalog,
    method_catalog,
    model_summary,
    prediction_rows,
    predictions,
)
from salience.server.watch import RequestCancelledError, TimeLimitExceededError

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "data.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
JobId = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="a job id")]


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("salience.server").joinpath("static")
    return {name: (folder.joinpath(name).read_bytes(), kind) for name, kind in STATIC_FILES.items()}


def _open(models: Sequence[LoadedModel | str] | None) -> list[LoadedModel]:
    from salience.loading import open_model
    from salience.zoo import DEFAULT_MODEL

    given = list(models) if models else [DEFAULT_MODEL]
    return [model if isinstance(model, LoadedModel) else open_model(model) for model in given]


class WorkerPool:
    """Threads that compute explanations, started on first use and again after a shutdown."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on a worker thread."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, "salience-worker")
            return self._executor.submit(fn, *args)

    def shutdown(self) -> None:
        """Drop queued work; running work ends at its next model pass (its job was cancelled)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _error_response(error: ApiError, **extra: Any) -> JSONResponse:
    return JSONResponse({**error.body(), **extra}, status_code=error.status)


async def _client_left(request: Request) -> None:
    """Return when the client hangs up (call it once the request's body is read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(work: asyncio.Future, request: Request) -> bool:
    """Wait for ``work``; return False as soon as the client hangs up before it is done."""
    leaving = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait((work, leaving), return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
    if not work.done() and leaving.done() and leaving.exception() is None:
        return False
    await work  # done, or the connection could not be watched: wait for the result
    return True


def create_app(
    models: Sequence[LoadedModel | str] | None = None,
    *,
    limits: Limits | None = None,
    workers: int | None = None,
) -> FastAPI:
    """Build the server's application.

    Parameters
    ----------
    models : sequence of LoadedModel or str, optional
        The models to serve, opened once here (names go through ``salience.loading.open_model``);
        the first is the default. Default: the bundled ``efficientnet_lite0``.
    limits : Limits, optional
        Upload size, pixel count, time per request, pending requests and their memory.
    workers : int, optional
        Threads that compute explanations; default the number of CPU cores.

    Returns
    -------
    fastapi.FastAPI
        Serve it with uvicorn (``salience serve`` does).
    """
    limits = limits or Limits()
    pool = ModelPool(_open(models))
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise InvalidInputError(f"workers must be at least 1, got {workers}")
    executor = WorkerPool(workers)
    budget = PendingBudget(limits.max_pending, limits.max_pending_bytes)
    jobs = JobStore()
    static = _static_files()
    catalog = method_catalog()
    colormaps = colormap_tables()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        jobs.cancel_all()
        executor.shutdown()

    app = FastAPI(
        title="salience",
        summary="Saliency maps of neural networks: upload an image, choose methods, get maps.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI comes from a CDN: /docs is the offline page below
        redoc_url=None,
    )
    app.state.pool, app.state.jobs, app.state.limits = pool, jobs, limits
    app.state.budget = budget
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_upload_bytes + 64 * 1024)
    app.add_middleware(InternalErrors)  # outermost: it sees whatever the others raise
    _add_error_handlers(app)

    # -- page -----------------------------------------------------------------------------------
    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        from salience.server.api_page import api_page

        return Response(api_page(app.openapi()), media_type="text/html; charset=utf-8")

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        body, kind = static["index.html"]
        return Response(body, media_type=kind, headers={"cache-control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static:
            raise RequestRejectedError(404, "not_found", f"no static file {name[:60]!r}")
        body, kind = static[name]
        return Response(body, media_type=kind, headers={"cache-control": "no-cache"})

    # -- menus ----------------------------------------------------------------------------------
    @app.get("/api/models", summary="The served models")
    def list_models() -> list[dict[str, Any]]:
        return [model_summary(pool.get(name), name == pool.default) for name in pool.names()]

    @app.get("/api/models/{model}/classes", summary="A model's class names, in index order")
    def list_classes(model: str) -> list[str]:
        return list(pool.get(model).class_names)

    @app.get("/api/models/{model}/layers", summary="A model's layers and the default CAM layer")
    async def list_layers(model: str) -> dict[str, Any]:
        loaded = pool.get(model)
        return await asyncio.wrap_future(executor.submit(layer_catalog, pool, loaded))

    @app.get("/api/methods", summary="The saliency methods")
    def list_methods() -> list[dict[str, Any]]:
        return catalog

    @app.get("/api/colormaps", summary="256-colour RGB tables of the page's colormaps")
    def list_colormaps() -> dict[str, list[list[int]]]:
        return colormaps

    @app.get(
        "/api/colormaps/diverging",
        summary="The page's diverging colormaps: a magnitude uses their upper half (zero neutral)",
    )
    def list_diverging() -> list[str]:
        return diverging_colormaps()

    @app.get("/api/limits", summary="The server's limits on a request")
    def show_limits() -> dict[str, Any]:
        return {**asdict(limits), "workers": workers}

    # -- computing ------------------------------------------------------------------------------
    async def read_upload(image: UploadFile) -> ImageUpload:
        """The upload, checked from its header; decoded later, by the worker that uses it."""
        data = await image.read(limits.max_upload_bytes + 1)
        return check_image_upload(data, limits)

    async def read_data(image: UploadFile, loaded: LoadedModel, features: str | None) -> DataUpload:
        """A scan, signal or table upload, read and checked against the model now (off the
        event loop), within the server's limits."""
        data = await image.read(limits.max_upload_bytes + 1)
        name = str(image.filename)
        return await run_in_threadpool(read_data_upload, data, name, loaded, limits, features)

    def prepare(loaded: LoadedModel, upload: ImageUpload) -> PreparedImage:
        return loaded.preset.prepare(upload.data, max_pixels=limits.max_pixels)

    def on_worker(
        upload: ImageUpload | DataUpload,
        work: Callable[[], Any],
        then: Callable[[], None] | None = None,
    ) -> asyncio.Future:
        """Run ``work`` on a worker within the budget (503 when full), then call ``then``.

        The upload's share of the budget is held until ``work`` returns or is dropped unrun.
        """
        budget.reserve(upload.memory)

        def finished(_future: Future) -> None:
            budget.release(upload.memory)
            if then is not None:
                then()

        try:
            future = executor.submit(work)
        except BaseException:
            budget.release(upload.memory)
            raise
        future.add_done_callback(finished)
        return asyncio.wrap_future(future)

    @app.post(
        "/api/predict",
        summary="The top-5 classes of an image, a scan or a signal; of each row of a table",
    )
    async def predict(
        image: Annotated[
            UploadFile,
            File(
                description="an image (PNG, JPEG, WebP, BMP, GIF or TIFF), a scan (.nii, "
                ".nii.gz, .npy), a signal (.npy, .csv) or rows of features (.csv)"
            ),
        ],
        model: Annotated[str | None, Form(max_length=200)] = None,
        features: FeaturesField = None,
    ) -> dict[str, Any]:
        loaded = pool.get(model)
        if is_data_upload(image.filename):
            found = await read_data(image, loaded, features)
            rows = await on_worker(found, lambda: prediction_rows(loaded, found.tensor()))
            answer = {"model": loaded.name, "predictions": rows[0]}
            return {**answer, "rows": rows} if found.kind == ROWS else answer
        upload = await read_upload(image)
        top = await on_worker(upload, lambda: predictions(loaded, prepare(loaded, upload)))
        return {"model": loaded.name, "predictions": top}

    async def submit(form: ExplainForm) -> tuple[Job, asyncio.Future]:
        loaded = pool.get(form.model)
        plan = await run_in_threadpool(plan_request, form, loaded, pool, limits)
        if is_data_upload(form.image.filename):  # a scan, signal or table: read and checked now
            found = await read_data(form.image, loaded, form.features)
            job: Job = DataJob(loaded, found, **plan, max_pixels=limits.max_pixels)
            future = on_worker(found, job.run, then=lambda: jobs.done(job))
            jobs.add(job)
            return job, future
        upload = await read_upload(form.image)
        job = Job(loaded, upload, **plan, max_pixels=limits.max_pixels)
        future = on_worker(upload, job.run, then=lambda: jobs.done(job))
        jobs.add(job)
        return job, future

    @app.post("/api/explain", summary="Explain an image; answers when every map is done")
    async def explain(request: Request, form: Annotated[ExplainForm, Depends(explain_form)]) -> Any:
        job, future = await submit(form)
        if not await _unless_client_leaves(future, request):
            job.watch.cancel()  # nobody waits for these maps: stop at the next model pass
            return _error_response(ApiError(409, "cancelled", "the client closed the connection"))
        if job.error is not None:
            return _error_response(job.error, job=job.snapshot())
        return job.snapshot()

    @app.post("/api/jobs", status_code=202, summary="Start explaining an image; poll the job")
    async def start_job(form: Annotated[ExplainForm, Depends(explain_form)]) -> dict[str, Any]:
        job, _ = await submit(form)
        return job.snapshot()

    @app.get("/api/jobs/{job_id}", summary="A job's progress and finished maps")
    def job_status(job_id: JobId) -> dict[str, Any]:
        return jobs.get(job_id).snapshot()

    @app.delete("/api/jobs/{job_id}", summary="Cancel a job (it stops at its next model pass)")
    def cancel_job(job_id: JobId) -> dict[str, Any]:
        job = jobs.get(job_id)
        job.watch.cancel()
        return job.snapshot()

    @app.get("/api/jobs/{job_id}/image.png", summary="The photo the maps are drawn on")
    def job_image(job_id: JobId) -> Response:
        job = jobs.get(job_id)
        if not job.view_png:
            raise RequestRejectedError(404, "not_found", f"job {job_id} has no image yet")
        return Response(job.view_png, media_type="image/png")

    @app.get("/api/jobs/{job_id}/maps/{index}/{name}", summary="One file of one map")
    def job_file(
        job_id: JobId,
        index: Annotated[int, Path(ge=0, le=10_000)],
        name: Literal["overlay.png", "map.npy", "display.f32", "map.nii.gz"],
    ) -> Response:
        data, kind = jobs.get(job_id).file(index, name)
        disposition = "inline" if name.endswith(".png") else "attachment"
        filename = f"salience-{job_id[:8]}-{index}-{name}"
        headers = {"content-disposition": f'{disposition}; filename="{filename}"'}
        return Response(data, media_type=kind, headers=headers)

    @app.get(
        "/api/jobs/{job_id}/maps/{index}/slices/{axial}.png",
        summary="One axial slice of a scan's map over the scan (the page's slider)",
    )
    def job_slice(
        job_id: JobId,
        index: Annotated[int, Path(ge=0, le=10_000)],
        axial: Annotated[int, Path(ge=0, le=100_000)],
    ) -> Response:
        job = jobs.get(job_id)
        if not isinstance(job, DataJob):
            raise RequestRejectedError(404, "not_found", f"job {job_id} explained no scan")
        return Response(job.slice_png(index, axial), media_type="image/png")

    @app.post("/api/sanity", summary="Randomize the top blocks; do the maps change?")
    async def sanity(form: Annotated[SanityForm, Depends()]) -> dict[str, Any]:
        loaded = pool.get(form.model)
        names = check_methods(form)
        upload = await read_upload(form.image)
        future = on_worker(upload, lambda: run_sanity(form, names, loaded, prepare(loaded, upload)))
        try:
            return await asyncio.wait_for(future, limits.time_limit)
        except TimeoutError as error:
            raise TimeLimitExceededError(
                f"the sanity check took longer than {limits.time_limit:g} s; ask for fewer "
                "blocks or methods"
            ) from error

    @app.get("/api/jobs/{job_id}/agreement", summary="Pairwise agreement of a job's maps")
    def job_agreement(
        job_id: JobId, top_fraction: Annotated[float, Query(gt=0, le=1)] = 0.1
    ) -> dict[str, Any]:
        job = jobs.get(job_id)
        if not job.finished:
            raise RequestRejectedError(409, "not_finished", f"job {job_id} is still running; wait")
        return agreement_of(job.maps, top_fraction)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every rejected request answers ``{"error", "kind", "status"}``."""
    from salience.adapters.base import GradientsUnavailableError

    async def library_error(request: Request, error: Exception) -> JSONResponse:
        return _error_response(report(error, f"{request.method} {request.url.path}"))

    for kind in (
        ValueError,
        LookupError,
        GradientsUnavailableError,
        TimeLimitExceededError,
        RequestCancelledError,
    ):
        app.add_exception_handler(kind, library_error)

    async def invalid(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        problems = [
            f"{'.'.join(str(part) for part in problem.get('loc', ())[1:]) or 'request'}: "
            f"{problem.get('msg', 'invalid')}"
            for problem in error.errors()
        ]
        message = "; ".join(problems) or "the request is invalid"
        return _error_response(ApiError(422, "invalid_request", message))

    async def http_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error_response(ApiError(error.status_code, kind, str(error.detail)))

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
