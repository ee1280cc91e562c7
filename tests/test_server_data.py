"""The server on scans, signals and feature rows: a 3-D box model's maps peak in its box, with
the montage, the NIfTI map in the scan's space and the slider's slices; a scan that does not fit
the model and a header that claims gigabytes are refused at once; a signal's traces and a table's
bar charts, with the table's feature names."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")
nibabel = pytest.importorskip("nibabel")
from fastapi.testclient import TestClient  # noqa: E402

from salience.adapters.torch import TorchAdapter  # noqa: E402
from salience.images import ImagePreset  # noqa: E402
from salience.loading import LoadedModel  # noqa: E402
from salience.server import Limits, create_app  # noqa: E402
from salience.server.data import read_data_upload  # noqa: E402

SIDE = 16
BOX = (slice(2, 6), slice(8, 12), slice(4, 10))  # the voxels class 0 sums
OTHER = (slice(10, 14), slice(0, 4), slice(12, 16))  # class 1's
LENGTH = 64
WINDOW = slice(20, 32)  # the time steps of channel 0 that class 0 of the signal model sums
FEATURES = ("age", "amount", "fee")
PRESET = ImagePreset(resize_shorter=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def box_mask(box: tuple[slice, ...]) -> Tensor:
    mask = torch.zeros(SIDE, SIDE, SIDE)
    mask[box] = 1
    return mask


class BoxNet(nn.Module):
    """A 3-D CNN: class 0 is the sum of the voxels of ``BOX`` (through a 1×1×1 identity
    convolution), class 1 of ``OTHER``; it declares the scans it takes."""

    input_shape = (None, 1, SIDE, SIDE, SIDE)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        self.register_buffer("boxes", torch.stack([box_mask(BOX), box_mask(OTHER)]))

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv(x) * self.boxes).sum(dim=(2, 3, 4))


class WindowNet(nn.Module):
    """Class 0 sums channel 0 over ``WINDOW``, class 1 sums channel 1; takes (N, 2, 64)."""

    input_shape = (None, 2, LENGTH)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv1d(2, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2)[:, :, None])
            self.features.bias.zero_()
        mask = torch.zeros(2, LENGTH)
        mask[0, WINDOW] = 1
        mask[1] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return (self.features(x) * self.mask).sum(dim=2)


def linear_model() -> nn.Module:
    model = nn.Linear(len(FEATURES), 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        model.bias.zero_()
    return model


@pytest.fixture(scope="module")
def client():
    models = [
        LoadedModel(TorchAdapter(BoxNet()), "box", PRESET, ["box", "other"]),
        LoadedModel(TorchAdapter(WindowNet()), "window", PRESET, ["window", "rest"]),
        LoadedModel(TorchAdapter(linear_model()), "linear", PRESET, ["yes", "no"]),
    ]
    limits = Limits(max_upload_bytes=2_000_000, time_limit=60.0, max_values=SIDE**3 * 8)
    with TestClient(create_app(models, limits=limits, workers=2)) as test_client:
        yield test_client


def affine() -> np.ndarray:
    """An oblique-ish affine with anisotropic voxels, kept by the map written back."""
    return np.array([[-1.5, 0, 0, 90.0], [0, -0.8, 0, 120.0], [0, 0, 3.0, -60.0], [0, 0, 0, 1]])


def nifti_bytes(data: np.ndarray) -> bytes:
    image = nibabel.Nifti1Image(data.astype(np.float32), affine())
    return gzip.compress(image.to_bytes())


def scan() -> np.ndarray:
    return np.random.default_rng(4).random((SIDE, SIDE, SIDE)).astype(np.float32) + 0.5


def post(client: TestClient, name: str, data: bytes, model: str, **fields: str):
    files = {"image": (name, data, "application/octet-stream")}
    return client.post("/api/explain", files=files, data={"model": model, **fields})


def npy(client: TestClient, url: str) -> np.ndarray:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(data)).size


def inside(box: tuple[slice, ...], voxel) -> bool:
    return all(part.start <= i < part.stop for part, i in zip(box, voxel, strict=True))


def test_a_nifti_scans_maps_peak_in_the_box_with_montage_nifti_and_slices(client) -> None:
    response = post(
        client,
        "scan.nii.gz",
        nifti_bytes(scan()),
        "box",
        methods="gradient_x_input,occlusion",
        target="0",
        window="2",
        stride="2",
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["modality"] == "volume" and job["geometry"]["shape"] == [SIDE] * 3
    assert [m["method"] for m in job["maps"]] == ["gradient_x_input", "occlusion"]
    for meta in job["maps"]:
        files = meta["files"]
        raw = npy(client, files["map.npy"])  # (C, D, H, W) or (D, H, W): one channel
        raw = raw[0] if raw.ndim == 4 else raw
        peak = np.unravel_index(int(np.argmax(raw)), raw.shape)
        assert inside(BOX, peak), (meta["method"], peak)
        outside = np.ones(raw.shape, bool)
        outside[BOX] = False
        assert np.abs(raw[outside]).max() < 1e-6  # nothing outside the box moves class 0
        written = gzip.decompress(client.get(files["map.nii.gz"]).content)
        nifti = nibabel.Nifti1Image.from_bytes(written)
        # the scan's affine as its header holds it (float32)
        np.testing.assert_array_equal(nifti.affine, affine().astype(np.float32))
        mapped = np.asarray(nifti.dataobj)
        assert mapped.shape == (SIDE, SIDE, SIDE)
        assert inside(BOX, np.unravel_index(int(np.argmax(mapped)), mapped.shape))
        volume = meta["volume"]
        assert inside(BOX, volume["peak"]) and volume["slices"] == SIDE
        png_size(client.get(files["overlay.png"]).content)  # the montage through the peak
        axis = volume["axial_axis"]
        others = [SIDE for a in range(3) if a != axis]
        url = files["slices"].format(index=volume["peak"][axis])
        assert png_size(client.get(url).content) == tuple(others)
        beyond = client.get(files["slices"].format(index=SIDE))
        assert beyond.status_code == 404 and "0 to 15" in beyond.json()["error"]
    assert client.get(job["image"]).content.startswith(b"\x89PNG")  # the scan alone


def test_a_slice_shows_the_map_only_inside_the_box(client) -> None:
    job = post(
        client, "scan.nii.gz", nifti_bytes(scan()), "box", methods="gradient", target="0"
    ).json()
    meta = job["maps"][0]
    axis = meta["volume"]["axial_axis"]

    def picture(index: int) -> np.ndarray:
        data = client.get(meta["files"]["slices"].format(index=index)).content
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), float)

    inside_slice = picture(BOX[axis].start)
    outside_slice = picture(
        next(i for i in range(SIDE) if not BOX[axis].start <= i < BOX[axis].stop)
    )
    # the map is 0 (opacity 0) off the box: that slice is the grey scan alone
    assert np.abs(outside_slice - outside_slice.mean(axis=2, keepdims=True)).max() <= 1.0
    assert np.abs(inside_slice - inside_slice.mean(axis=2, keepdims=True)).max() > 20


def test_a_scan_of_another_shape_is_refused_naming_the_shape_the_model_takes(client) -> None:
    small = np.ones((12, 12, 12), np.float32)
    response = post(client, "small.nii.gz", nifti_bytes(small), "box", methods="gradient")
    assert response.status_code == 400
    body = response.json()
    assert "(N, 1, 16, 16, 16)" in body["error"] and "small.nii.gz" in body["error"]
    assert "\n" not in body["error"]
    jobs = client.post(
        "/api/jobs",
        files={"image": ("small.nii.gz", nifti_bytes(small), "application/gzip")},
        data={"model": "box"},
    )
    assert jobs.status_code == 400  # refused before a job is made


def test_a_header_claiming_gigabytes_is_refused_before_any_voxel_is_read(client) -> None:
    header = nibabel.Nifti1Header()
    header.set_data_shape((4096, 4096, 4096))  # 2^36 voxels: 256 GiB of float32
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    body = header.binaryblock + b"\0" * 4 + b"\0" * 64  # the header, then a few voxels only
    response = post(client, "huge.nii.gz", gzip.compress(body), "box")
    assert response.status_code == 413, response.text
    found = response.json()
    assert found["kind"] == "too_large" and f"limit of {SIDE**3 * 8}" in found["error"]
    npy_header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        npy_header, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
    )
    response = post(client, "huge.npy", npy_header.getvalue() + b"\0" * 16, "window")
    assert response.status_code == 413 and response.json()["kind"] == "too_large"


def test_a_npy_signal_gets_its_traces_and_the_windows_gradient(client) -> None:
    signal = np.random.default_rng(1).random((2, LENGTH)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, signal)
    response = post(client, "ecg.npy", buffer.getvalue(), "window", methods="gradient", target="0")
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["modality"] == "signal" and job["geometry"]["length"] == LENGTH
    (meta,) = job["maps"]
    expected = np.zeros((2, LENGTH), np.float32)
    expected[0, WINDOW] = 1  # d(Σ_window x_0)/dx
    np.testing.assert_array_equal(npy(client, meta["files"]["map.npy"]), expected)
    png_size(client.get(meta["files"]["overlay.png"]).content)
    assert "map.nii.gz" not in meta["files"] and "slices" not in meta["files"]


def test_a_csv_is_a_signal_for_a_model_of_signals(client) -> None:
    signal = np.random.default_rng(2).random((LENGTH, 2))
    text = "I,II\n" + "\n".join(f"{a:.6f},{b:.6f}" for a, b in signal)
    response = post(client, "ecg.csv", text.encode(), "window", methods="gradient", target="0")
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["modality"] == "signal" and job["geometry"]["channels"] == ["I", "II"]


def test_csv_rows_get_bar_charts_with_their_feature_names(client) -> None:
    rows = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    text = "id,age,amount,fee\n" + "\n".join(
        f"r{n},{a},{b},{c}" for n, (a, b, c) in enumerate(rows)
    )
    response = post(
        client, "rows.csv", text.encode(), "linear", methods="gradient_x_input", target="0"
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["modality"] == "rows" and job["image"] is None
    (meta,) = job["maps"]
    assert meta["features"] == list(FEATURES) and meta["rows"] == 2
    weights = np.array([1.0, -2.0, 0.5])
    attributions = npy(client, meta["files"]["map.npy"])  # (rows, targets, features)
    np.testing.assert_allclose(attributions[:, 0], rows * weights, rtol=1e-6)  # w · x, exact
    png_size(client.get(meta["files"]["overlay.png"]).content)


def test_csv_rows_of_the_wrong_width_name_what_the_model_takes(client) -> None:
    response = post(client, "rows.csv", b"a,b\n1,2\n", "linear", methods="gradient")
    assert response.status_code == 400
    assert "3" in response.json()["error"] and "\n" not in response.json()["error"]


def test_salience_serve_sets_the_limits_of_scans_and_tables(monkeypatch) -> None:
    import uvicorn

    import salience.loading
    from salience.cli import main

    served = {}
    box = LoadedModel(TorchAdapter(BoxNet()), "box", PRESET, ["box", "other"])
    monkeypatch.setattr(salience.loading, "open_model", lambda name: box)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app))
    assert main(["serve", "--max-values", "4095", "--max-rows", "7"]) == 0
    limits = served["app"].state.limits
    assert (limits.max_values, limits.max_rows) == (4095, 7)
    with TestClient(served["app"]) as small:
        response = post(small, "scan.nii.gz", nifti_bytes(scan()), "box")  # 16³ = 4096 voxels
    assert response.status_code == 413 and "limit of 4095" in response.json()["error"]


def test_a_damaged_file_is_refused_in_one_line_naming_only_its_own_name(client) -> None:
    response = post(client, "../../etc/scan.nii.gz", b"not a scan at all", "box")
    assert response.status_code == 400
    message = response.json()["error"]
    assert "scan.nii.gz" in message and "etc" not in message and "\n" not in message
    assert "salience-" not in message  # nor the server's private file it was read through
    response = post(client, "signal.npy", b"\x93NUMPY garbage", "window")
    assert response.status_code == 400 and "signal.npy" in response.json()["error"]
    assert post(client, "empty.csv", b"", "linear").json()["kind"] == "empty_file"


def test_the_features_field_chooses_a_tables_columns_in_the_models_order(client) -> None:
    text = "fee,note,age,amount,extra\n3,x,1,2,9\n"
    response = post(
        client,
        "rows.csv",
        text.encode(),
        "linear",
        methods="gradient_x_input",
        target="0",
        features="age,amount,fee",
    )
    assert response.status_code == 200, response.text
    (meta,) = response.json()["maps"]
    assert meta["features"] == list(FEATURES)
    attributions = npy(client, meta["files"]["map.npy"])[0, 0]
    np.testing.assert_allclose(attributions, [1.0 * 1, -2.0 * 2, 0.5 * 3], rtol=1e-6)
    missing = post(client, "rows.csv", text.encode(), "linear", features="age,zz,fee")
    assert missing.status_code == 400 and "zz" in missing.json()["error"]


def predict(client: TestClient, name: str, data: bytes, model: str, **fields: str):
    files = {"image": (name, data, "application/octet-stream")}
    return client.post("/api/predict", files=files, data={"model": model, **fields})


def test_a_scan_and_a_signal_are_predicted_from_their_own_files(client) -> None:
    data = nifti_bytes(scan())
    response = predict(client, "scan.nii.gz", data, "box")
    assert response.status_code == 200, response.text
    top = response.json()["predictions"]
    box = LoadedModel(TorchAdapter(BoxNet()), "box", PRESET, ["box", "other"])
    volume = read_data_upload(data, "scan.nii.gz", box, Limits(max_values=SIDE**3)).tensor()
    sums = [float(volume[0, 0][part].sum()) for part in (BOX, OTHER)]  # the model's two sums
    assert [line["index"] for line in top] == sorted((0, 1), key=lambda k: -sums[k])
    assert [line["name"] for line in top] == [["box", "other"][line["index"]] for line in top]
    assert {line["index"]: line["logit"] for line in top} == pytest.approx(
        dict(enumerate(sums)), rel=1e-5
    )
    signal = np.random.default_rng(1).random((2, LENGTH)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, signal)
    response = predict(client, "ecg.npy", buffer.getvalue(), "window")
    assert response.status_code == 200, response.text
    logits = {line["index"]: line["logit"] for line in response.json()["predictions"]}
    expected = {0: float(signal[0, WINDOW].sum()), 1: float(signal[1].sum())}
    assert logits == pytest.approx(expected, rel=1e-5)
    assert "rows" not in response.json()


def test_each_row_of_a_table_is_predicted_with_its_chosen_columns(client) -> None:
    text = "fee,age,amount\n3,1,2\n4,-1,0.5\n"
    response = predict(client, "rows.csv", text.encode(), "linear", features="age,amount,fee")
    assert response.status_code == 200, response.text
    answer = response.json()
    rows = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    weights = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    expected = rows @ weights.T
    assert len(answer["rows"]) == 2 and answer["predictions"] == answer["rows"][0]
    for row, top in zip(expected, answer["rows"], strict=True):
        assert {line["index"]: line["logit"] for line in top} == pytest.approx(
            dict(enumerate(row)), rel=1e-6
        )
    refused = predict(client, "rows.csv", b"a,b\n1,2\n", "linear")
    assert refused.status_code == 400 and "3" in refused.json()["error"]


def test_the_layers_of_a_tables_model_are_probed_with_a_row(client) -> None:
    mlp = nn.Sequential(nn.Linear(len(FEATURES), 4), nn.ReLU(), nn.Linear(4, 2))
    models = [LoadedModel(TorchAdapter(mlp), "mlp", PRESET, ["yes", "no"])]
    with TestClient(create_app(models)) as own:
        response = own.get("/api/models/mlp/layers")
    assert response.status_code == 200, response.text
    layers = {layer["name"]: layer["shape"] for layer in response.json()["layers"]}
    assert layers == {"0": [4], "1": [4], "2": [2]}  # what a row of 3 features gives
    scans = client.get("/api/models/box/layers").json()["layers"]
    assert [layer["shape"] for layer in scans if layer["name"] == "conv"] == [[1, SIDE, SIDE, SIDE]]
