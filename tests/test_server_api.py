"""The HTTP API: menus, predictions and maps equal to the library's, limits, hostile requests,
concurrency without mixing, flat memory, the ``serve`` command."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import os
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx2")
from fastapi.testclient import TestClient  # noqa: E402

from salience.adapters.torch import TorchAdapter  # noqa: E402
from salience.api import explain_all, make_explainer, method_options  # noqa: E402
from salience.images import ImagePreset  # noqa: E402
from salience.loading import LoadedModel  # noqa: E402
from salience.postprocess import display_values, to_display  # noqa: E402
from salience.registry import available  # noqa: E402
from salience.server import Limits, create_app  # noqa: E402

CLASSES = ["cat", "dog", "bird", "fish"]
PRESET = ImagePreset(resize_shorter=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
OPTIONS = {"samples": 4, "steps": 8, "masks": 40, "window": 8, "stride": 8, "seed": 3}
METHOD_VALUES = {
    "n_samples": 4,
    "noise": 0.15,
    "steps": 8,
    "baseline": "zeros",
    "n_masks": 40,
    "window": 8,
    "stride": 8,
    "layer": "auto",
    "relu": True,
    "seed": 3,
}
"""The method options that OPTIONS (plus the form's defaults) ask for."""


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, len(CLASSES)),
    )


class Sleepy(nn.Module):
    """A tiny CNN whose every forward pass takes at least ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.net = tiny_cnn(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.net(x)


def loaded(model: nn.Module, name: str) -> LoadedModel:
    return LoadedModel(TorchAdapter(model), name, PRESET, list(CLASSES))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(seed: int, size: tuple[int, int] = (40, 48)) -> bytes:
    """A distinct random RGB image per seed."""
    return png(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def upload(data: bytes, name: str = "image.png", kind: str = "image/png") -> dict:
    return {"image": (name, data, kind)}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_cnn()


@pytest.fixture(scope="module")
def app(model: nn.Module):
    limits = Limits(max_upload_bytes=1_000_000, max_pixels=1_000_000, time_limit=60.0)
    return create_app([loaded(model, "tiny")], limits=limits, workers=2)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as test_client:
        yield test_client


def reference(model: nn.Module, data: bytes, methods: list[str], target: object) -> dict:
    """The library's maps for an upload, computed directly."""
    x = PRESET.prepare(data).tensor
    explainers = [make_explainer(model, m, **method_options(m, METHOD_VALUES)) for m in methods]
    return explain_all(model, x, explainers, target=target, class_names=CLASSES)


def npy(client: TestClient, url: str) -> np.ndarray:
    response = client.get(url)
    assert response.status_code == 200
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def test_menus_come_from_the_registry_and_the_model(client, model):
    models = client.get("/api/models").json()
    assert [m["name"] for m in models] == ["tiny"] and models[0]["classes"] == 4
    assert {m["name"] for m in client.get("/api/methods").json()} == set(available("method"))
    assert client.get("/api/models/tiny/classes").json() == CLASSES
    layers = client.get("/api/models/tiny/layers").json()
    assert layers["default"] == TorchAdapter(model).resolve_layer(None, torch.zeros(1, 3, 32, 32))
    assert set(client.get("/api/colormaps").json()["viridis"][0]) <= set(range(256))
    assert client.get("/api/colormaps/diverging").json() == ["RdBu_r"]  # of the page's seven
    docs = client.get("/docs")
    assert docs.status_code == 200 and "<code>/api/explain</code>" in docs.text  # offline page
    assert "/api/explain" in client.get("/openapi.json").json()["paths"]


def test_page_is_served_locally_without_any_outside_address(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("index.html", "app.js", "style.css"):
        text = page.text if name == "index.html" else client.get(f"/static/{name}").text
        assert "http://" not in text and "https://" not in text, name


def test_predictions_equal_the_models_softmax(client, model):
    data = photo(1)
    response = client.post("/api/predict", files=upload(data), data={"model": "tiny"})
    assert response.status_code == 200
    found = response.json()["predictions"]
    with torch.no_grad():
        probabilities = torch.softmax(model.eval()(PRESET.prepare(data).tensor)[0], 0)
    order = probabilities.argsort(descending=True).tolist()
    assert [p["index"] for p in found] == order
    assert [p["name"] for p in found] == [CLASSES[i] for i in order]
    np.testing.assert_allclose([p["probability"] for p in found], probabilities[order], atol=1e-5)


def test_maps_equal_the_librarys_and_files_match_their_metadata(client, model):
    data = photo(2)
    methods = ["gradcam", "gradient", "smoothgrad"]
    response = client.post(
        "/api/explain",
        files=upload(data),
        data={"methods": ",".join(methods), "target": "dog", **OPTIONS},
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "done" and [m["status"] for m in job["methods"]] == ["done"] * 3
    expected = reference(model, data, methods, "dog")
    assert [m["method"] for m in job["maps"]] == methods
    for meta in job["maps"]:
        assert meta["target"] == 1 and meta["target_name"] == "dog"
        raw = npy(client, meta["files"]["map.npy"])
        np.testing.assert_allclose(raw, expected[meta["method"]].map(0, 0).numpy(), atol=1e-5)
        shown = np.frombuffer(client.get(meta["files"]["display.f32"]).content, "<f4")
        shown = shown.reshape(meta["display_shape"])
        assert shown.shape == (40, 48)  # the whole photo, the crop's outside NaN
        normalized = to_display(expected[meta["method"]].map(0, 0), percentile=None)
        on_photo = PRESET.prepare(data).geometry.to_original(normalized.numpy())
        np.testing.assert_allclose(shown, on_photo, atol=1e-5)  # NaN where the other is NaN
        assert np.isnan(shown).any() and 0 <= np.nanmin(shown) <= np.nanmax(shown) <= 1
        units = display_values(expected[meta["method"]].map(0, 0), percentile=None).double()
        # the colorbar's numbers: 0 and 1 of display.f32 in the map's units, within the raw
        # map's tolerance (a reduction's extremes move no more than the map's values)
        np.testing.assert_allclose(meta["display_range"], [units.min(), units.max()], atol=1e-5)
        overlay = Image.open(io.BytesIO(client.get(meta["files"]["overlay.png"]).content))
        assert overlay.size == (48, 40)
    view = Image.open(io.BytesIO(client.get(job["image"]).content))
    assert np.array_equal(np.asarray(view), np.asarray(Image.open(io.BytesIO(data))))


def test_a_class_name_or_a_unique_part_of_one_selects_that_class(client):
    for typed, index in (("Bird", 2), ("do", 1), ("FISH", 3)):
        response = client.post(
            "/api/explain", files=upload(photo(3)), data={"methods": "gradcam", "target": typed}
        )
        assert response.status_code == 200, response.text
        assert [(m["target"], m["target_name"]) for m in response.json()["maps"]] == [
            (index, CLASSES[index])
        ]
    # a part of two names ("i": bird, fish) is refused before any job, naming both
    refused = client.post("/api/jobs", files=upload(photo(3)), data={"target": "i"})
    assert refused.status_code == 400 and refused.json()["kind"] == "bad_target"
    assert "'bird', 'fish'" in refused.json()["error"]


def test_samples_auto_grows_the_count_as_the_flag_does(client):
    response = client.post(
        "/api/explain",
        files=upload(photo(3)),
        data={"methods": "smoothgrad", "samples": "auto", "seed": "3"},
    )
    assert response.status_code == 200, response.text
    (meta,) = response.json()["maps"]
    assert meta["params"]["n_samples"] == "auto"
    history = meta["info"]["convergence"]["history"]
    assert history[0][0] == 32 and meta["info"]["samples"] == history[-1][0]  # doubled from 32
    for fields, named in (({"masks": "lots"}, "masks"), ({"samples": "501"}, "samples")):
        refused = client.post("/api/explain", files=upload(photo(3)), data=fields)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"].startswith(f"{named} must be auto or an integer >= 1")


def test_top_k_gives_k_maps_per_method_for_the_top_classes(client, model):
    data = photo(3)
    response = client.post(
        "/api/explain", files=upload(data), data={"methods": "gradcam", "target": "top-3"}
    )
    maps = response.json()["maps"]
    with torch.no_grad():
        top = model.eval()(PRESET.prepare(data).tensor)[0].topk(3).indices.tolist()
    assert [m["target"] for m in maps] == top and [m["rank"] for m in maps] == [0, 1, 2]


def test_agreement_of_a_jobs_maps_equals_the_evaluation_module(client, model):
    agreement = pytest.importorskip("salience.evaluation.agreement").agreement
    data = photo(4)
    methods = ["gradcam", "gradient", "gradient_x_input"]
    job = client.post("/api/explain", files=upload(data), data={"methods": methods}).json()
    found = client.get(f"/api/jobs/{job['id']}/agreement").json()
    maps = {name: e.map(0, 0) for name, e in reference(model, data, methods, None).items()}
    expected = agreement(maps)
    assert found["methods"] == methods
    np.testing.assert_allclose(found["spearman"], expected.spearman, atol=1e-6)
    np.testing.assert_allclose(found["iou"], expected.iou, atol=1e-6)


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_each_accepted_type_is_recognized_by_content_not_by_name(client, kind):
    buffer = io.BytesIO()
    Image.fromarray(np.full((36, 36, 3), 90, np.uint8)).save(buffer, format=kind)
    response = client.post("/api/predict", files=upload(buffer.getvalue(), "x.txt", "text/plain"))
    assert response.status_code == 200, response.text
    garbage = buffer.getvalue()[:12] + b"\0" * 64  # the right magic bytes, then nothing valid
    refused = client.post("/api/predict", files=upload(garbage))
    assert refused.status_code == 415 and refused.json()["kind"] == "not_an_image"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` pixels but carries almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    body = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def _big_body(total: int, piece: int = 1 << 20):
    sent = 0
    while sent < total:
        yield b"\0" * piece
        sent += piece


HOSTILE = {
    "not an image": (upload(b"#!/bin/sh\necho hello\n" * 20), {}, 415, "not_an_image"),
    "an image type not accepted (SVG)": (
        upload(b'<svg xmlns="x"><rect width="9" height="9"/></svg>', "a.svg", "image/svg+xml"),
        {},
        415,
        "not_an_image",
    ),
    "a decompression bomb (header of 60000 x 60000)": (
        upload(_png_header_only(60_000, 60_000)),
        {},
        413,
        "too_many_pixels",
    ),
    "a compressed image over the pixel limit": (
        upload(png(np.zeros((1100, 1000, 3), np.uint8))),
        {},
        413,
        "too_many_pixels",
    ),
    "a path as the model": (upload(photo(5)), {"model": "/etc/passwd"}, 400, "unknown_model"),
    "an ONNX path as the model": (upload(photo(5)), {"model": "../m.onnx"}, 400, "unknown_model"),
    "a path as the layer": (
        upload(photo(5)),
        {"layer": "../../etc/passwd"},
        400,
        "bad_layer",
    ),
    "an unknown method": (upload(photo(5)), {"methods": "telepathy"}, 400, "unknown_name"),
    "a class index out of range": (upload(photo(5)), {"target": "4"}, 400, "bad_target"),
    "a negative class index": (upload(photo(5)), {"target": "-1"}, 400, "bad_target"),
    "an unknown class name": (upload(photo(5)), {"target": "zebra"}, 400, "bad_target"),
    "top-K over the limit": (upload(photo(5)), {"target": "top-9"}, 400, "bad_target"),
    "an option out of range": (upload(photo(5)), {"samples": "100000"}, 422, "invalid_request"),
    "an unknown colormap": (upload(photo(5)), {"cmap": "rainbowz"}, 400, "bad_request"),
    "no image": (None, {"methods": "gradient"}, 422, "invalid_request"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_request_gets_a_json_4xx_and_the_server_keeps_serving(client, case, monkeypatch):
    import salience.loading

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a request opened a model file")

    monkeypatch.setattr(salience.loading, "open_model", never)
    files, fields, status, kind = HOSTILE[case]
    response = client.post("/api/explain", files=files, data=fields)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["kind"] == kind and body["status"] == status
    assert body["error"] and "\n" not in body["error"]
    assert client.post("/api/predict", files=upload(photo(6))).status_code == 200


def test_a_200_mb_body_is_refused_unread_declared_or_streamed(client):
    total = 200 * 1024 * 1024
    declared = client.post("/api/explain", content=b"x", headers={"content-length": str(total)})
    assert declared.status_code == 413 and declared.json()["kind"] == "too_large"
    pieces = _big_body(total)
    streamed = client.post(
        "/api/explain", content=pieces, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413 and streamed.json()["kind"] == "too_large"
    assert client.post("/api/predict", files=upload(photo(6))).status_code == 200


def test_a_real_server_answers_a_200_mb_upload_before_it_is_sent(app):
    """Over a socket: the 413 arrives while the client is still sending, long before 200 MB."""
    import select
    import socket
    from urllib.parse import urlsplit

    from salience.server.background import serving

    piece = b"1000\r\n" + b"\0" * 0x1000 + b"\r\n"  # one 4 KiB chunk
    with serving(app) as url:
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            part = (
                b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n"
            )
            sock.sendall(
                b"POST /api/explain HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
                + f"{len(part):x}\r\n".encode()
                + part
                + b"\r\n"
            )
            sent, answer = 0, b""
            while sent < 200 * 1024 * 1024:
                if select.select([sock], [], [], 0)[0]:
                    answer = sock.recv(65536)
                    break
                try:
                    sock.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 0x1000
            with contextlib.suppress(ConnectionResetError):  # the server hangs up after its 413
                while chunk := sock.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]  # (the JSON is checked above)
        assert sent < 32 * 1024 * 1024  # refused after the limit (1 MB), not after 200 MB
        with httpx.Client(base_url=url) as after:
            assert after.post("/api/predict", files=upload(photo(6))).status_code == 200


def test_paths_in_urls_reach_no_file(client):
    for url in (
        "/static/../../pyproject.toml",
        "/static/%2e%2e%2fpyproject.toml",
        "/api/jobs/..%2f..%2fetc%2fpasswd",
        "/api/jobs/" + "0" * 32,
    ):
        response = client.get(url)
        assert 400 <= response.status_code < 500, url
        assert "error" in response.json()


def test_twenty_concurrent_requests_all_succeed_unmixed(app, model):
    """20 requests at once (in-process, bounded): each gets the maps of its own image and target."""
    requests = [
        (photo(100 + i), ["gradcam", "gradient"] if i % 2 else ["smoothgrad"], i % len(CLASSES))
        for i in range(20)
    ]

    async def send_all() -> list:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def one(data: bytes, methods: list[str], target: int):
                fields = {"methods": ",".join(methods), "target": str(target), **OPTIONS}
                fields = {key: str(value) for key, value in fields.items()}
                response = await client.post("/api/explain", files=upload(data), data=fields)
                files = {}
                for meta in response.json().get("maps", []):
                    raw = await client.get(meta["files"]["map.npy"])
                    files[meta["method"]] = np.load(io.BytesIO(raw.content))
                return response, files

            return await asyncio.wait_for(
                asyncio.gather(*(one(*request) for request in requests)), timeout=120
            )

    results = asyncio.run(send_all())
    for (data, methods, target), (response, maps) in zip(requests, results, strict=True):
        assert response.status_code == 200, response.text
        assert [m["target"] for m in response.json()["maps"]] == [target] * len(methods)
        expected = reference(model, data, methods, target)
        for method in methods:
            np.testing.assert_allclose(maps[method], expected[method].map(0, 0), atol=1e-5)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_memory_stays_flat_across_500_requests(client):
    data = photo(7)
    fields = {"methods": "gradient", "target": "predicted"}

    def burst(count: int) -> None:
        for _ in range(count):
            assert client.post("/api/explain", files=upload(data), data=fields).status_code == 200

    burst(100)  # warm up: allocator pools, the job store filling to its bound
    before = _rss_bytes()
    burst(400)
    growth = _rss_bytes() - before
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB over 400 requests"
    assert len(client.app.state.jobs) <= client.app.state.jobs.max_finished


@pytest.fixture(scope="module")
def sleepy_client():
    limits = Limits(time_limit=0.5)
    app = create_app([loaded(Sleepy(0.03), "sleepy")], limits=limits, workers=2)
    with TestClient(app) as test_client:
        yield test_client


def test_a_slow_request_stops_at_the_time_limit(sleepy_client):
    started = time.monotonic()
    response = sleepy_client.post(
        "/api/explain",
        files=upload(photo(8)),
        data={"methods": "gradient,smoothgrad", "samples": "400"},
    )
    assert response.status_code == 504 and response.json()["kind"] == "time_limit"
    job = response.json()["job"]
    assert job["status"] == "stopped" and job["elapsed"] < 0.5 + 1.0
    assert [m["status"] for m in job["methods"]] == ["done", "stopped"]
    assert [m["method"] for m in job["maps"]] == ["gradient"]  # the finished map is kept
    assert time.monotonic() - started < 10


def test_a_job_shows_progress_and_can_be_cancelled(sleepy_client):
    started = sleepy_client.post(
        "/api/jobs", files=upload(photo(9)), data={"methods": "smoothgrad", "samples": "400"}
    )
    assert started.status_code == 202
    job_id = started.json()["id"]
    deadline = time.monotonic() + 10
    while (job := sleepy_client.get(f"/api/jobs/{job_id}").json())["passes"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job["status"] == "running" and job["methods"][0]["status"] == "running"
    assert job["methods"][0]["passes"] >= 1
    # the total is known once SmoothGrad's chunks are announced: 400 samples are far from done
    assert job["methods"][0]["passes"] < job["methods"][0]["total_passes"]
    sleepy_client.delete(f"/api/jobs/{job_id}")
    while (job := sleepy_client.get(f"/api/jobs/{job_id}").json())["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job["error"]["kind"] == "cancelled" and job["samples"] < 400


def test_the_users_model_is_unchanged_by_requests(client, model):
    model.train()
    before = copy.deepcopy(model.state_dict())
    client.post(
        "/api/explain", files=upload(photo(10)), data={"methods": "gradcam,rise", **OPTIONS}
    )
    client.post("/api/explain", files=upload(photo(10)), data={"methods": "nope"})
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    model.eval()


def test_serve_command_opens_each_model_once_and_binds_to_loopback(monkeypatch, capsys):
    import uvicorn

    import salience.loading
    from salience.cli import main

    opened, served = [], {}
    monkeypatch.setattr(
        salience.loading,
        "open_model",
        lambda name: opened.append(name) or loaded(tiny_cnn(), name),
    )
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    assert main(["serve", "--model", "one,two", "--model", "one", "--port", "8123"]) == 0
    assert opened == ["one", "two"]
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    assert served["app"].state.pool.names() == ["one", "two"]
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys):
    import sys

    from salience.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve"]) == 2
    assert "pip install 'salience[server]'" in capsys.readouterr().err


def test_sanity_endpoint_equals_the_library_and_refuses_slow_methods(
    client: TestClient, model: nn.Module
) -> None:
    from salience.evaluation.randomization import sanity_check

    data = photo(11)
    fields = {"methods": "gradient,guided_backprop,gradcam", "blocks": "2", "seed": "4"}
    response = client.post("/api/sanity", files=upload(data), data=fields)
    assert response.status_code == 200, response.text
    body = response.json()
    x = PRESET.prepare(data).tensor
    layers = [unit.name for unit in TorchAdapter(model).randomization_units(x)[:2]]
    expected = sanity_check(
        model,
        x,
        ["gradient", "guided_backprop", "gradcam"],
        layers=layers,
        seed=4,
        progress=False,
    )
    assert body["model"] == "tiny" and body["steps"] == layers
    for metric in expected.metrics:
        for m, method in enumerate(expected.methods):
            np.testing.assert_allclose(
                body["mean"][metric][method], expected.mean(metric)[m], atol=1e-9
            )
    assert body["verdicts"]["gradient"]["threshold"] == 0.5

    slow = client.post("/api/sanity", files=upload(data), data={"methods": "smoothgrad"})
    assert slow.status_code == 400 and slow.json()["kind"] == "bad_method"
    assert "salience sanity" in slow.json()["error"]
    too_many = client.post("/api/sanity", files=upload(data), data={"blocks": "50"})
    assert too_many.status_code == 422 and too_many.json()["kind"] == "invalid_request"


def test_an_empty_stride_field_is_half_the_window_as_on_the_command_line(client):
    """The page sends every option's field, an empty one where the schema has no default."""
    response = client.post(
        "/api/explain",
        files=upload(photo(1)),
        data={"methods": "occlusion", "window": "8", "stride": ""},
    )
    assert response.status_code == 200, response.text
    assert response.json()["maps"][0]["params"]["stride"] == 4
    refused = client.post(
        "/api/explain",
        files=upload(photo(1)),
        data={"methods": "occlusion", "window": "2", "stride": "8"},
    )
    assert refused.status_code == 400 and "larger than its window" in refused.text
