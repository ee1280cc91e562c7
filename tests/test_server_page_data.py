"""The page's panel of scans in real headless Chromium: upload a NIfTI scan, see the montage,
move the slice slider (needs Chromium, as tests/test_server_page.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium")
pytest.importorskip("nibabel")

from conftest import browser_session
from salience.server.browser import DataPanel, ViewerPage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    yield from browser_session()


def test_a_nifti_scan_shows_its_montage_and_the_slider_moves_through_slices(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    from salience.adapters.torch import TorchAdapter
    from salience.loading import LoadedModel
    from salience.server import create_app
    from salience.server.background import serving
    from salience.server.data import read_data_upload
    from salience.server.limits import Limits
    from salience.server.service import prediction_rows
    from salience.volumes import axis_views
    from test_server_data import BOX, PRESET, SIDE, BoxNet, affine, nifti_bytes, scan

    path = tmp_path / "scan.nii.gz"
    path.write_bytes(nifti_bytes(scan()))
    model = LoadedModel(TorchAdapter(BoxNet()), "box", PRESET, ["box", "other"])
    artifacts = Path(os.environ.get("SALIENCE_ARTIFACTS") or tmp_path)
    with serving(create_app([model])) as url:
        page = ViewerPage(browser, url)
        page.open()
        panel = DataPanel(page)
        assert panel.explain(path, "gradient", target="0") == 1
        assert panel.message().startswith("scan.nii.gz: volume, 1 map(s)")
        # the scan's prediction is listed as soon as it is chosen, as POST /api/predict gives it
        scan_input = read_data_upload(path.read_bytes(), path.name, model, Limits()).tensor()
        expected = [line["text"] for line in prediction_rows(model, scan_input)[0]]
        assert panel.predictions() == expected and len(expected) == 2
        first = panel.slice_shown()
        assert (first["width"], first["height"]) == (SIDE, SIDE)
        axial = axis_views(affine()).index("axial")
        assert int(first["index"]) in range(BOX[axial].start, BOX[axial].stop)  # the peak's
        assert panel.press_on_slider(Keys.HOME) == "0"
        bottom = panel.slice_shown("0")
        assert bottom["src"] != first["src"] and bottom["sum"] != first["sum"]
        assert panel.press_on_slider(Keys.END) == str(SIDE - 1)
        top = panel.slice_shown(str(SIDE - 1))
        assert top["src"].endswith(f"/slices/{SIDE - 1}.png")
        panel.screenshot(artifacts / "viewer-scan-slider.png")


def test_each_row_of_a_table_is_predicted_under_its_heading(browser, tmp_path):
    from salience.adapters.torch import TorchAdapter
    from salience.loading import LoadedModel
    from salience.server import create_app
    from salience.server.background import serving
    from salience.server.data import read_data_upload
    from salience.server.limits import Limits
    from salience.server.service import prediction_rows
    from test_server_data import PRESET, linear_model

    path = tmp_path / "rows.csv"
    path.write_text("age,amount,fee\n1,2,3\n-1,0.5,4\n")
    model = LoadedModel(TorchAdapter(linear_model()), "linear", PRESET, ["yes", "no"])
    rows = read_data_upload(path.read_bytes(), path.name, model, Limits()).tensor()
    expected = [line["text"] for row in prediction_rows(model, rows) for line in row]
    with serving(create_app([model])) as url:
        page = ViewerPage(browser, url)
        page.open()
        panel = DataPanel(page)
        page._find("#data-file").send_keys(str(path.resolve()))
        assert panel.predictions() == expected and len(expected) == 4
        headings = [item.text for item in page._all("#data-predictions li.row")]
        assert headings == ["row 1", "row 2"]
