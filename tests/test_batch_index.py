"""A job's index page in real headless Chromium: the thumbnails load, sorting by confidence and
by correctness orders the rows as the results table says.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); set
``SALIENCE_SKIP_BROWSER=1`` to skip. The screenshot is kept in ``$SALIENCE_ARTIFACTS`` (default:
the test's temporary folder).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from PIL import Image

from conftest import browser_session
from salience.runner import JobSpec, run_job
from salience.runner.work import IMAGE_THUMBNAIL, method_thumbnail
from test_batch import MODEL, OPTIONS, make_images

pytest.importorskip("selenium")


pytestmark = pytest.mark.slow
METHODS = ("gradient", "gradcam")

_IMAGES = """
window.scrollTo(0, document.body.scrollHeight);
return [...document.querySelectorAll('#results img')].map((img) => ({
  src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth,
  height: img.naturalHeight, shown: img.getBoundingClientRect().width}));
"""
_ORDER = "return [...document.querySelectorAll('#results tbody tr')].map((r) => r.dataset.path);"


@pytest.fixture(scope="module")
def browser():
    yield from browser_session(1200, 900)


def wait_for(driver, script: str, condition, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        lambda d: (value := d.execute_script(script)) and condition(value) and value
    )


def test_index_shows_thumbnails_and_sorts_by_confidence_and_correctness(browser, tmp_path):
    from selenium.webdriver.common.by import By

    paths = make_images(tmp_path / "images", 6, seed=2)
    (tmp_path / "images" / "broken.png").write_text("not an image")
    labels = ["3", "5", "3", "", "5", "3", "3"]
    names = [path.name for path in paths] + ["broken.png"]
    lines = [f"images/{name},{label}" for name, label in zip(names, labels, strict=True)]
    (tmp_path / "data.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    spec = JobSpec(model=MODEL, load_options=OPTIONS, methods=METHODS)
    out = tmp_path / "out"
    run_job(spec, tmp_path / "data.csv", out, workers=1, progress=False)
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    done = [row for row in rows if row["status"] == "done"]
    assert len(done) == 6
    assert {row["correct"] for row in done} == {"True", "False", ""}  # both kinds, and unknown

    browser.get((out / "index.html").resolve().as_uri())
    expected = {
        f"items/{row['key']}/{name}"
        for row in done
        for name in (IMAGE_THUMBNAIL, *map(method_thumbnail, METHODS))
    }
    images = wait_for(browser, _IMAGES, lambda found: all(i["complete"] for i in found))
    assert {image["src"] for image in images} == expected
    for image in images:  # every thumbnail loaded, at the size of its file
        width, height = Image.open(out / image["src"]).size
        assert (image["width"], image["height"]) == (width, height) != (0, 0)
        assert image["shown"] > 0
    browser.execute_script("window.scrollTo(0, 0);")
    artifacts = Path(os.environ.get("SALIENCE_ARTIFACTS") or tmp_path)
    (artifacts / "batch-index.png").write_bytes(browser.get_screenshot_as_png())

    confidence = browser.find_element(By.CSS_SELECTOR, 'th[data-sort="probability"]')
    by_probability = sorted(done, key=lambda row: -float(row["probability"]))
    failed = [row["path"] for row in rows if row["status"] != "done"]
    confidence.click()
    assert browser.execute_script(_ORDER) == [row["path"] for row in by_probability] + failed
    confidence.click()
    assert browser.execute_script(_ORDER) == [row["path"] for row in by_probability[::-1]] + failed

    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="correct"]').click()
    order = browser.execute_script(_ORDER)
    position = {row["path"]: rows.index(row) for row in rows}
    by_correct = sorted(
        rows,
        key=lambda row: ({"True": 0, "False": 1}.get(row["correct"], 2), position[row["path"]]),
    )  # right first, then wrong, then unknown; ties in the table's order
    assert order == [row["path"] for row in by_correct]
