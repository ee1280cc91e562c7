"""Make docs/images/viewer.png: the web viewer with the cat photo and three methods.

Run from the repository root (needs the dev extra and Debian's chromium + chromium-driver):

    .venv/bin/python docs/screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image

from salience.server import create_app
from salience.server.background import serving
from salience.server.browser import ViewerPage, chromium
from salience.zoo import SAMPLE_IMAGES

METHODS = ("gradcam", "integrated_gradients", "occlusion")
OUTPUT = Path(__file__).resolve().parent / "images" / "viewer.png"


def main() -> int:
    """Serve the bundled model, drive the page in headless Chromium, save the screenshot."""
    with tempfile.TemporaryDirectory() as folder:
        cat = Path(folder) / "chelsea.png"
        Image.fromarray(SAMPLE_IMAGES["chelsea"]()).save(cat)
        with serving(create_app()) as url, chromium(width=1480, height=1000) as driver:
            page = ViewerPage(driver, url, timeout=300)
            page.open()
            page.upload(cat)
            page.choose_methods(METHODS)
            page.explain()
            page.wait_for_maps(len(METHODS))
            page.screenshot(OUTPUT)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
