"""The server under pressure: queued uploads stay compressed within a memory budget, a client
that hangs up cancels its work, and every answer (a crash, malformed HTTP) is the JSON error."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx2")
from fastapi.testclient import TestClient  # noqa: E402

from salience.adapters.torch import TorchAdapter  # noqa: E402
from salience.images import ImagePreset, PreparedImage  # noqa: E402
from salience.loading import LoadedModel  # noqa: E402
from salience.server import Limits, create_app  # noqa: E402
from salience.server.background import serving  # noqa: E402
from salience.server.limits import DECODED_BYTES_PER_PIXEL, ImageUpload  # noqa: E402
from test_server_api import CLASSES, PRESET, Sleepy, loaded, photo, png, tiny_cnn, upload  # noqa: E402

WAIT = 60.0
"""Seconds a test waits for something that takes milliseconds before it gives up (no timing)."""


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


# -- queued jobs hold compressed bytes, within a memory budget -------------------------------------
class SharedEvent(threading.Event):
    """An event shared by a model and its copies (the adapter runs a deep copy of the model)."""

    def __deepcopy__(self, _memo: dict) -> SharedEvent:
        return self


class Gate(nn.Module):
    """A tiny CNN whose forward pass waits until the test opens the gate: a paused worker."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(2)
        self.entered = SharedEvent()
        self.opened = SharedEvent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        if not self.opened.wait(WAIT):
            raise RuntimeError("the test never opened the gate")
        return self.net(x)


def decoded_images() -> int:
    gc.collect()
    return sum(type(thing) is PreparedImage for thing in gc.get_objects())


def test_queued_jobs_hold_their_upload_compressed_within_a_memory_budget():
    gate = Gate()
    data = png(np.zeros((200, 200, 3), np.uint8))  # a few hundred bytes, 40,000 pixels
    memory = len(data) + 200 * 200 * DECODED_BYTES_PER_PIXEL
    limits = Limits(max_pending_bytes=int(2.5 * memory), max_pending=64, time_limit=WAIT)
    app = create_app([loaded(gate, "gate")], limits=limits, workers=1)
    fields = {"methods": "gradient"}
    try:
        with TestClient(app) as client:
            before = decoded_images()
            first = client.post("/api/jobs", files=upload(data), data=fields)
            assert first.status_code == 202, first.text
            wait_until(gate.entered.is_set, "the first job to reach the model")
            second = client.post("/api/jobs", files=upload(data), data=fields)
            assert second.status_code == 202, second.text
            small = client.post("/api/jobs", files=upload(photo(1)), data=fields)
            assert small.status_code == 202, small.text  # what is left of the budget fits it

            # Only the running job has decoded its photo; the queued ones hold the upload.
            assert decoded_images() <= before + 1
            store = app.state.jobs
            queued = [job for job in store.jobs() if job.status == "queued"]
            assert len(queued) == 2
            for job in queued:
                assert isinstance(job.upload, ImageUpload) and isinstance(job.upload.data, bytes)
                assert not any(isinstance(v, PreparedImage) for v in vars(job).values())
            assert queued[0].upload.data == data

            # A third big one would pass the memory budget (not the count): 503 busy, as JSON,
            # for jobs and predictions alike.
            for route in ("/api/jobs", "/api/explain", "/api/predict"):
                refused = client.post(route, files=upload(data), data=fields)
                assert refused.status_code == 503, (route, refused.text)
                body = refused.json()
                assert body["kind"] == "busy" and body["status"] == 503 and "MiB" in body["error"]
            # One image over the whole budget can never fit: too large, not busy.
            huge = png(np.zeros((400, 400, 3), np.uint8))
            alone = client.post("/api/jobs", files=upload(huge), data=fields)
            assert alone.status_code == 413 and alone.json()["kind"] == "too_many_pixels"

            gate.opened.set()
            wait_until(lambda: all(job.finished for job in store.jobs()), "the jobs to finish")
            assert [job.status for job in store.jobs()] == ["done"] * 3
            wait_until(lambda: app.state.budget.usage() == (0, 0), "the budget to be given back")
            assert all(job.upload is None for job in store.jobs())
            again = client.post("/api/jobs", files=upload(data), data=fields)
            assert again.status_code == 202, again.text
    finally:
        gate.opened.set()


# -- a client that hangs up cancels its work -------------------------------------------------------
def multipart_request(path: str, fields: dict[str, str], image: bytes) -> bytes:
    """A raw HTTP/1.1 multipart POST of ``fields`` and ``image``."""
    boundary = "salience-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    )
    return head.encode() + body


@contextlib.contextmanager
def connection(url: str) -> Iterator[socket.socket]:
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=WAIT) as sock:
        yield sock


def test_a_client_that_hangs_up_cancels_its_request_and_frees_the_worker():
    """Two heavy requests dropped by their clients (one running, one queued) stop; the next
    small request is served after them, not after 2 × 500 SmoothGrad samples."""
    app = create_app([loaded(Sleepy(0.05), "sleepy")], limits=Limits(time_limit=WAIT), workers=1)
    heavy = {"methods": "smoothgrad", "samples": "500"}
    store = app.state.jobs
    with serving(app) as url, httpx.Client(base_url=url, timeout=WAIT) as client:
        with connection(url) as running, connection(url) as queued:
            running.sendall(multipart_request("/api/explain", heavy, photo(2)))
            wait_until(lambda: len(store.jobs()) == 1, "the first request's job")
            first = store.jobs()[0]
            wait_until(lambda: first.watch.counters()[0] >= 1, "the first job to compute")
            queued.sendall(multipart_request("/api/explain", heavy, photo(3)))
            wait_until(lambda: len(store.jobs()) == 2, "the second request's job")
            second = store.jobs()[1]
            assert second.status == "queued"
        # Both sockets are closed now; the next request waits for the only worker.
        small = client.post("/api/explain", files=upload(photo(4)), data={"methods": "gradient"})
        assert small.status_code == 200, small.text
        for job in (first, second):
            assert job.finished, job.status  # a single worker: they ended before the small one
            snapshot = job.snapshot()
            assert snapshot["status"] == "stopped" and snapshot["error"]["kind"] == "cancelled"
        passes, samples = first.watch.counters()
        assert passes >= 1 and samples < 500  # stopped mid-way, at a model pass
        assert second.watch.counters() == (0, 0)  # cancelled while queued: never computed
        assert first.watch.counters() == (passes, samples)  # and nothing runs on
        assert app.state.budget.usage() == (0, 0)


# -- every answer is the JSON error ----------------------------------------------------------------
class Exhausted(ImagePreset):
    """A preset that runs out of memory decoding any image."""

    def prepare(self, image: object, *, max_pixels: int = 0) -> PreparedImage:
        raise MemoryError


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a bug in the model's forward")


def broken_app():
    exhausted = Exhausted(PRESET.resize_shorter, PRESET.crop, PRESET.mean, PRESET.std)
    models = [
        LoadedModel(TorchAdapter(tiny_cnn()), "exhausted", exhausted, list(CLASSES)),
        loaded(Broken(), "broken"),
    ]
    return create_app(models, limits=Limits(time_limit=WAIT), workers=1)


@pytest.mark.parametrize(
    ("route", "model", "error"),
    [
        ("/api/predict", "exhausted", MemoryError),
        ("/api/explain", "exhausted", MemoryError),
        ("/api/sanity", "exhausted", MemoryError),
        ("/api/predict", "broken", RuntimeError),
        ("/api/explain", "broken", RuntimeError),
    ],
)
def test_an_unexpected_failure_answers_json_500_and_logs_its_traceback(route, model, error, caplog):
    with TestClient(broken_app(), raise_server_exceptions=False) as client:
        with caplog.at_level(logging.ERROR, logger="salience.server"):
            response = client.post(
                route, files=upload(photo(6)), data={"model": model, "methods": "gradient"}
            )
        assert response.status_code == 500
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["kind"] == "internal" and body["status"] == 500
        assert error.__name__ in body["error"] and "\n" not in body["error"]
        logged = [r for r in caplog.records if r.name == "salience.server" and r.exc_info]
        assert len(logged) == 1 and logged[0].exc_info[0] is error
        assert "Traceback" in caplog.text
        assert client.get("/api/models").status_code == 200  # and it keeps serving


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP answer (the server closes the connection)."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


MALFORMED = {
    "a negative Content-Length": (
        b"POST /api/predict HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n"
    ),
    "a malformed request line": b"GET\x00/ nonsense\r\n\r\n",
    "a header without a colon": b"GET /api/models HTTP/1.1\r\nHost t\r\n\r\n",
}


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    app = create_app([loaded(tiny_cnn(), "tiny")], limits=Limits(time_limit=WAIT), workers=1)
    with serving(app) as url:
        yield url


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_http_gets_the_json_400(server_url, case):
    with connection(server_url) as sock:
        sock.sendall(MALFORMED[case])
        status, headers, body = read_answer(sock)
    assert status == 400 and headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert answer["status"] == 400 and answer["kind"] == "bad_http"
    assert "valid HTTP" in answer["error"]
    with httpx.Client(base_url=server_url) as after:
        assert after.get("/api/models").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("GET", "/api/nowhere", 404, "not_found"),
        ("GET", "/api/explain", 405, "method_not_allowed"),
        ("DELETE", "/api/models", 405, "method_not_allowed"),
    ],
)
def test_unknown_routes_and_wrong_methods_get_json(server_url, method, path, status, kind):
    with httpx.Client(base_url=server_url) as client:
        response = client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": response.json()["error"], "kind": kind, "status": status}


def test_serve_answers_malformed_http_as_json_and_bounds_pending_memory(monkeypatch):
    import uvicorn
    from uvicorn.importer import import_from_string

    import salience.loading
    from salience.cli import main
    from salience.server.protocol import http_protocol

    served = {}
    monkeypatch.setattr(salience.loading, "open_model", lambda name: loaded(tiny_cnn(), name))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    assert main(["serve", "--max-pending-mb", "512"]) == 0
    assert served["http"] is http_protocol()
    assert import_from_string("salience.server.protocol:JsonErrorHTTPProtocol") is http_protocol()
    assert served["app"].state.limits.max_pending_bytes == 512 * 1024 * 1024


def test_an_invalid_content_length_that_reaches_the_app_gets_the_json_400():
    """Servers other than uvicorn may pass the header on: the body-size guard answers it."""
    import asyncio

    from salience.server.limits import BodySizeLimit

    def never(*_args: object) -> None:
        raise AssertionError("the application ran")

    sent = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"-5")]}
    asyncio.run(BodySizeLimit(never, max_bytes=100)(scope, receive, send))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["kind"] == "bad_http"
