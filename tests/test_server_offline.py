"""The viewer offline: ``/docs`` needs no network, and the page takes the TIFF files that the
command reads."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")
from fastapi.testclient import TestClient

from salience.server import Limits, create_app
from test_server_api import loaded, tiny_cnn, upload

STATIC = Path(__file__).resolve().parents[1] / "src" / "salience" / "server" / "static"


@pytest.fixture(scope="module")
def client():
    limits = Limits(max_upload_bytes=1_000_000, max_pixels=1_000_000, time_limit=60.0)
    app = create_app([loaded(tiny_cnn(), "tiny")], limits=limits, workers=1)
    with TestClient(app) as test_client:
        yield test_client


def test_docs_is_a_page_that_needs_no_network(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    # nothing is fetched from elsewhere: no script at all, no stylesheet or image by address
    assert "<script" not in page
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    for path in ("/api/explain", "/api/predict", "/api/jobs/{job_id}"):
        assert f"<code>{path}</code>" in page
    assert "/openapi.json" in page and client.get("/openapi.json").status_code == 200


def test_a_tiff_upload_is_taken(client: TestClient) -> None:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="TIFF")
    files = upload(buffer.getvalue(), "photo.tif", "image/tiff")
    response = client.post("/api/predict", files=files, data={"model": "tiny"})
    assert response.status_code == 200, response.text
    chooser = re.search(r'id="file" accept="([^"]+)"', (STATIC / "index.html").read_text())
    assert chooser is not None and "image/tiff" in chooser.group(1).split(",")
