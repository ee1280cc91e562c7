"""The viewer page in real headless Chromium: upload the cat photo, two methods, move the opacity.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); set
``SALIENCE_SKIP_BROWSER=1`` to skip. The screenshot is kept in ``$SALIENCE_ARTIFACTS`` (default:
the test's temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("selenium")

from conftest import browser_session
from salience.server.browser import ViewerPage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    yield from browser_session()


def test_cat_photo_two_methods_and_the_opacity_slider(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    from salience.loading import open_model
    from salience.server import create_app
    from salience.server.background import serving
    from salience.server.service import predictions
    from salience.zoo import SAMPLE_IMAGES

    cat = tmp_path / "chelsea.png"
    Image.fromarray(SAMPLE_IMAGES["chelsea"]()).save(cat)
    model = open_model("efficientnet_lite0")
    expected = predictions(model, model.preset.prepare(str(cat)))
    artifacts = Path(os.environ.get("SALIENCE_ARTIFACTS") or tmp_path)

    with serving(create_app([model])) as url:
        page = ViewerPage(browser, url)
        page.open()
        assert not page.progress_shown()  # nothing runs yet: no progress bar
        shown = page.upload(cat)
        assert not page.progress_shown()
        page.screenshot(artifacts / "viewer-no-progress-before-explain.png")
        assert len(shown) == len(expected) == 5
        assert all(
            line.startswith(f"{p['name']} ") for line, p in zip(shown, expected, strict=True)
        )
        assert shown[0].startswith(f"{expected[0]['name']} {100 * expected[0]['probability']:.1f}%")

        page.choose_methods(["gradcam", "gradient"])
        page.explain()
        page.wait_for_maps(2)
        assert page.progress_text().startswith("2 of 2 methods done")
        drawn = page.canvas_pixels()
        assert sorted(item["method"] for item in drawn) == ["gradcam", "gradient"]
        height, width = Image.open(cat).size[::-1]
        assert all((item["width"], item["height"]) == (width, height) for item in drawn)
        assert not any(page.canvases_equal_photo())  # at opacity 0.5 the colours show
        page.screenshot(artifacts / "viewer-two-methods.png")

        assert page.press_on_slider("opacity", Keys.HOME) == "0"
        assert page.canvases_equal_photo() == [True, True]  # opacity 0: exactly the photo
        assert page.press_on_slider("opacity", Keys.END) == "100"
        opaque = page.canvas_pixels()
        assert not any(page.canvases_equal_photo())
        for before, after in zip(drawn, opaque, strict=True):
            assert before["sum"] != after["sum"]
            assert not np.array_equal(before["sample"], after["sample"])
        page.screenshot(artifacts / "viewer-opaque.png")
