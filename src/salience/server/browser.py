"""Drive the viewer page in headless Chromium with Selenium (the browser test, the docs screenshot).

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (in the ``dev``
extra). Chromium starts with the flags that keep it off the network, in a fresh profile.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
INSTALL_HINT = (
    "the browser test needs Chromium and its driver: apt-get install chromium chromium-driver "
    "(Debian), or set SALIENCE_SKIP_BROWSER=1 to skip it"
)


def missing_browser() -> str | None:
    """Why the page cannot be driven here (with how to fix it), or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing; {INSTALL_HINT}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing; pip install -e '.[dev]'"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile, quit (and the profile removed) after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if problem := missing_browser():
        raise RuntimeError(problem)
    profile = tempfile.mkdtemp(prefix="salience-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


_PREDICTIONS = """
return [...document.querySelectorAll('#predictions li[data-index]')].map((li) => li.textContent);
"""
_CANVAS_PIXELS = """
return [...document.querySelectorAll('.card canvas.map-canvas')].map((canvas) => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 1) sum += data[i];
  return {method: canvas.closest('.card').dataset.method, width: canvas.width,
          height: canvas.height, sum: sum, sample: Array.from(data.slice(0, 4 * 4096))};
});
"""
_CANVAS_EQUALS_PHOTO = """
const photo = state.photo.data;
return [...document.querySelectorAll('.card canvas.map-canvas')].map((canvas) => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  if (data.length !== photo.length) return false;
  for (let i = 0; i < data.length; i += 1) if (data[i] !== photo[i]) return false;
  return true;
});
"""
_IN_VIEW = """
const rect = document.getElementById(arguments[0]).getBoundingClientRect();
return {top: rect.top, bottom: rect.bottom, height: window.innerHeight, width: window.innerWidth};
"""
_OVERFLOWING = """
return [...document.querySelectorAll(arguments[0])]
  .filter((element) => element.scrollWidth > element.clientWidth)
  .map((element) => element.textContent);
"""
_COLORBARS = """
return [...document.querySelectorAll('.card[data-index]')].map((card) => {
  const bar = card.querySelector('.colorbar');
  const entry = state.cards.get(Number(card.dataset.index));
  return {method: card.dataset.method, low: Number(bar.dataset.low),
          high: Number(bar.dataset.high), ramp: bar.querySelector('.ramp').style.background,
          ticks: [...bar.querySelectorAll('.ticks span')].map((span) => span.textContent),
          label: bar.querySelector('.unit').textContent, meta: entry.meta};
});
"""


class ViewerPage:
    """The viewer page in a browser, seen as a person uses it.

    Parameters
    ----------
    driver : selenium WebDriver
        E.g. from :func:`chromium`.
    url : str
        The server's base URL.
    timeout : float
        Seconds to wait for the page to react.
    """

    def __init__(self, driver: Any, url: str, timeout: float = 60.0) -> None:
        self.driver = driver
        self.url = url
        self.timeout = timeout

    def _find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def _all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        """Wait until ``condition()`` is truthy; raise with the page's message otherwise."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        message = self._find("#message").text
        raise TimeoutError(f"timed out waiting for {what}; the page says: {message!r}")

    def open(self) -> None:
        """Load the page and wait for its menus."""
        self.driver.get(self.url + "/")
        self.wait(lambda: self._find("body").get_attribute("data-ready") == "1", "the menus")

    def upload(self, path: str | Path) -> list[str]:
        """Choose an image file with the file picker; return the top-5 lines shown."""
        self._find("#file").send_keys(str(Path(path).resolve()))
        return self.wait(lambda: self.driver.execute_script(_PREDICTIONS), "the predictions")

    def choose_methods(self, names: Sequence[str]) -> None:
        """Tick exactly these methods."""
        for box in self._all('input[name="method"]'):
            if box.is_selected() != (box.get_attribute("value") in names):
                box.click()

    def explain(self) -> None:
        """Press Explain."""
        self._find("#explain").click()

    def wait_for_maps(self, count: int, timeout: float | None = None) -> None:
        """Wait until ``count`` maps are drawn and the job is over."""

        def ready() -> bool:
            drawn = len(self._all('.card[data-state="done"] canvas.map-canvas'))
            return drawn >= count and self._find("#cancel").get_attribute("hidden") is not None

        self.wait(ready, f"{count} maps", timeout)

    def type_class(self, text: str) -> None:
        """Type a class name into the class field (replacing what is there)."""
        field = self._find("#class-name")
        field.clear()
        field.send_keys(text)

    def target_kind(self) -> str:
        """The target option chosen: ``predicted``, ``topk`` or ``class``."""
        return self._find('input[name="target"]:checked').get_attribute("value")

    def set_auto(self, field: str, on: bool = True) -> str:
        """Tick (or untick) the ``auto`` box of a count (opening the method options); return
        the value the form will send."""
        self.driver.execute_script(
            "document.getElementById('options').closest('details').open = true;"
        )
        box = self._find(f"#{field}-auto")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
        if box.is_selected() != on:
            box.click()
        script = "return optionValue(state.options.find((o) => o.field === arguments[0]));"
        return self.driver.execute_script(script, field)

    def choose_colormap(self, name: str) -> None:
        """Choose the page's colormap (``auto``: each map's by its sign)."""
        from selenium.webdriver.support.ui import Select

        Select(self._find("#cmap")).select_by_value(name)

    def switch(self, field: str, on: bool = True) -> None:
        """Set a method option's switch (a checkbox, such as ``keep_negative``)."""
        self.driver.execute_script(
            "document.getElementById(arguments[0]).checked = arguments[1];", field, on
        )

    def message(self, timeout: float | None = None) -> str:
        """Wait for the page's message line to say something; return it."""
        return self.wait(lambda: self._find("#message").text, "a message", timeout)

    def in_view(self, element_id: str) -> dict[str, float]:
        """An element's top and bottom on the screen, and the window's inner size."""
        return self.driver.execute_script(_IN_VIEW, element_id)

    def overflowing(self, css: str) -> list[str]:
        """The texts of the elements matching ``css`` whose content is wider than they are."""
        return self.driver.execute_script(_OVERFLOWING, css)

    def colorbars(self) -> list[dict[str, Any]]:
        """For each drawn map: its colorbar's ends, gradient, tick texts, label and map JSON."""
        return self.driver.execute_script(_COLORBARS)

    def map_subtitles(self) -> list[str]:
        """The class line under each drawn map's title."""
        return [card.text for card in self._all(".card[data-index] .sub")]

    def status_texts(self) -> list[str]:
        """The status lines of the cards still waiting for their map."""
        return [span.text for span in self._all(".card .status")]

    def progress_shown(self) -> bool:
        """Whether the progress line is rendered at all."""
        return self._find("#progress").is_displayed()

    def progress_text(self) -> str:
        """The progress line."""
        return self._find("#progress-text").text

    def canvas_pixels(self) -> list[dict[str, Any]]:
        """For each drawn map: its method, size, pixel sum and its first 4096 RGBA pixels."""
        return self.driver.execute_script(_CANVAS_PIXELS)

    def canvases_equal_photo(self) -> list[bool]:
        """For each drawn map: whether its pixels are exactly the photo's."""
        return self.driver.execute_script(_CANVAS_EQUALS_PHOTO)

    def press_on_slider(self, element_id: str, *keys: str) -> str:
        """Focus a slider and press keys on it (e.g. Keys.HOME); return its new value."""
        slider = self._find(f"#{element_id}")
        slider.send_keys(*keys)
        return slider.get_attribute("value")

    def screenshot(self, path: str | Path) -> Path:
        """Save a PNG of the page, scrolled to its top (atomically)."""
        from salience.fileio import write_bytes_atomic

        self.driver.execute_script("window.scrollTo(0, 0);")

        return write_bytes_atomic(path, self.driver.get_screenshot_as_png())


_DATA_SLICE = """
const picture = document.querySelector('.data-card .data-slice');
if (!picture || !picture.complete || picture.naturalWidth === 0) return null;
const canvas = document.createElement('canvas');
canvas.width = picture.naturalWidth;
canvas.height = picture.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(picture, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
let sum = 0;
for (let i = 0; i < data.length; i += 1) sum += data[i];
return {index: picture.dataset.index, src: picture.getAttribute('src'), width: canvas.width,
        height: canvas.height, sum: sum};
"""


class DataPanel:
    """The page's panel of scans, signals and feature rows (``static/data.js``), driven as a
    person uses it; the page is opened by :meth:`ViewerPage.open`."""

    def __init__(self, page: ViewerPage) -> None:
        self.page = page

    def explain(self, path: str | Path, methods: str, target: str = "predicted") -> int:
        """Choose the file, the methods and the target, press Explain; return the maps shown."""
        page = self.page
        page._find("#data-file").send_keys(str(Path(path).resolve()))
        for element_id, value in (("data-methods", methods), ("data-target", target)):
            field = page._find(f"#{element_id}")
            field.clear()
            field.send_keys(value)
        page._find("#data-explain").click()

        def shown() -> int:
            if page._find("#data-message").get_attribute("class").endswith("error"):
                raise RuntimeError(page._find("#data-message").text)
            return len(page._all(".data-card img.data-picture"))

        return page.wait(shown, "the maps of the data file")

    def message(self) -> str:
        """The panel's status line."""
        return self.page._find("#data-message").text

    def predictions(self) -> list[str]:
        """The prediction lines listed for the chosen file, once there are some."""

        def listed() -> list[str] | None:
            items = self.page._all("#data-predictions li[data-index]")
            return [item.text for item in items] or None

        return self.page.wait(listed, "the data file's prediction")

    def slice_shown(self, index: str | None = None) -> dict[str, Any]:
        """The slider's slice once loaded (``index`` given: once it is that slice): its index,
        address, size and pixel sum."""

        def loaded() -> dict[str, Any] | None:
            found = self.page.driver.execute_script(_DATA_SLICE)
            return found if found and (index is None or found["index"] == index) else None

        return self.page.wait(loaded, f"axial slice {index}")

    def press_on_slider(self, *keys: str) -> str:
        """Press keys on the first scan map's slice slider; return its new value."""
        slider = self.page._find(".data-card .data-slider")
        slider.send_keys(*keys)
        return slider.get_attribute("value")

    def screenshot(self, path: str | Path) -> Path:
        """Save a PNG of the page scrolled to the panel (atomically)."""
        from salience.fileio import write_bytes_atomic

        self.page.driver.execute_script("document.getElementById('data').scrollIntoView();")
        return write_bytes_atomic(path, self.page.driver.get_screenshot_as_png())
