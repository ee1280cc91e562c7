"""The viewer page in real headless Chromium: upload the cat photo, two methods, move the opacity.

Also, at 1400×1000: Explain in view, no name spilling out of its box, ``auto`` counts, a class
typed by a part of its name (and a part of several refused), colorbars in the map's units by sign
mode and colormap, and "N of M passes" while a sampled method runs.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); set
``SALIENCE_SKIP_BROWSER=1`` to skip. The screenshot is kept in ``$SALIENCE_ARTIFACTS`` (default:
the test's temporary folder).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
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
    every = predictions(model, model.preset.prepare(str(cat)), k=len(model.class_names))

    def probability(name: str) -> float:
        return next(p["probability"] for p in every if p["name"] == name)

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
        explain = page.in_view("explain")  # at 1400×1000, with a model and a photo loaded
        assert explain["top"] >= 0 and explain["bottom"] <= explain["height"], explain
        assert page.overflowing(".methods label") == []  # long names are cut, not spilled
        assert page.set_auto("samples") == "auto" and page.set_auto("masks") == "auto"
        assert page.set_auto("samples", False) == "50" and page.set_auto("masks", False) == "4000"
        explain = page.in_view("explain")  # the method options open: the button stays in view
        assert explain["top"] >= 0 and explain["bottom"] <= explain["height"], explain

        page.choose_methods(["gradcam", "gradient"])
        page.type_class("cat")  # typing a name chooses the class target ...
        assert page.target_kind() == "class"
        page.explain()  # ... and a word in several names is refused, naming them
        message = page.message()
        assert "'Egyptian cat'" in message and "'tiger cat'" in message, message
        assert page.canvas_pixels() == []
        page.screenshot(artifacts / "viewer-ambiguous-class.png")

        page.type_class("persian")  # one name has it: Persian cat, not the predicted class
        page.explain()
        page.wait_for_maps(2)
        assert page.map_subtitles() == [f"Persian cat {100 * probability('Persian cat'):.1f}%"] * 2
        assert page.progress_text().startswith("2 of 2 methods done")
        assert page.overflowing(".card, .card h3, .card .sub, .colorbar") == []
        drawn = page.canvas_pixels()
        assert sorted(item["method"] for item in drawn) == ["gradcam", "gradient"]
        height, width = Image.open(cat).size[::-1]
        assert all((item["width"], item["height"]) == (width, height) for item in drawn)
        assert not any(page.canvases_equal_photo())  # at opacity 0.5 the colours show
        page.screenshot(artifacts / "viewer-two-methods.png")
        bars = page.colorbars()
        assert [bar["method"] for bar in bars] == ["gradient", "gradcam"]
        for bar in bars:  # magnitudes: jet from the low to the high clip, in the map's units
            assert bar["meta"]["scale"]["sign"] == "absolute_value"
            assert bar["ramp"].startswith("linear-gradient(to right, rgb(0, 0, 127) 0%")  # jet
            assert 0 <= bar["low"] < bar["high"] and len(bar["ticks"]) == 3
            assert bar["label"] == bar["meta"]["scale"]["label"]
        with urllib.request.urlopen(url + "/api/colormaps") as response:
            white = json.load(response)["RdBu_r"][128]  # RdBu_r's neutral middle
        page.choose_colormap("RdBu_r")  # a diverging map on magnitudes: its upper half only
        for bar in page.colorbars():
            assert bar["ramp"].startswith(
                f"linear-gradient(to right, rgb({', '.join(map(str, white))}) 0%"
            )
        page.choose_colormap("auto")
        page.press_on_slider("clip-high", Keys.END)  # 100%: the top is the map's largest value
        for bar in page.colorbars():
            first, last = bar["meta"]["display_range"]
            with urllib.request.urlopen(url + bar["meta"]["files"]["display.f32"]) as response:
                shown = np.frombuffer(response.read(), "<f4").astype(np.float64)
            top = np.nanmax(np.abs(first + shown * (last - first)))  # the map's units, as drawn
            # the same float64 arithmetic, kept as float32 by the page (a Float32Array)
            assert bar["high"] == pytest.approx(float(np.float32(top)), rel=1e-12)
            assert float(bar["ticks"][2]) == pytest.approx(bar["high"], rel=5e-3)  # 3 digits

        assert page.press_on_slider("opacity", Keys.HOME) == "0"
        assert page.canvases_equal_photo() == [True, True]  # opacity 0: exactly the photo
        assert page.press_on_slider("opacity", Keys.END) == "100"
        opaque = page.canvas_pixels()
        assert not any(page.canvases_equal_photo())
        for before, after in zip(drawn, opaque, strict=True):
            assert before["sum"] != after["sum"]
            assert not np.array_equal(before["sample"], after["sample"])
        page.screenshot(artifacts / "viewer-opaque.png")

        page.choose_methods(["gradcam"])  # with its negative part: a signed map
        page.switch("keep_negative")
        page.explain()
        page.wait_for_maps(1)
        (bar,) = page.colorbars()
        assert bar["meta"]["scale"]["sign"] == "all"  # diverging, centred on zero
        assert bar["low"] == -bar["high"] < 0 and bar["ticks"][1] == "0"
        assert bar["ramp"].startswith("linear-gradient(to right, rgb(5, 48, 97) 0%")  # RdBu_r
        page.screenshot(artifacts / "viewer-signed.png")
        page.switch("keep_negative", False)

        page.choose_methods(["smoothgrad"])  # a sampled method says how many passes it needs
        page.explain()
        status = page.wait(
            lambda: [t for t in page.status_texts() if re.search(r"\d+ of \d+ passes", t)],
            "a pass count with its total",
        )
        done, total = map(int, re.search(r"(\d+) of (\d+) passes", status[0]).groups())
        assert 0 <= done <= total
        page.wait_for_maps(1)
        page.press_on_slider("opacity", Keys.END)  # the last screenshot: the finished page
        page.screenshot(artifacts / "viewer-final.png")
