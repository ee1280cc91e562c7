"""One way to draw a map: ``salience explain``, ``salience batch`` and ``POST /api/explain`` give
byte-identical maps and overlays for the same image, model, method and display options (the
command line's PNG is the overlay under its title, with its colorbar beside it)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salience import cli, viz
from salience.errors import InvalidInputError
from salience.explanation import Explanation
from salience.images import ImagePreset
from salience.render import DisplayOptions, View, render

MODEL = "model_factories:seeded_digits_net"
METHODS = ("gradient", "gradcam", "smoothgrad")
METHOD_FLAGS = {"target": "top-2", "samples": "4", "noise": "0.2", "seed": "3"}
DISPLAY_FLAGS = {"reduce": "abs_sum", "percentile": "97", "smooth": "1.5", "cmap": "viridis"}
DISPLAY_FLAGS |= {"alpha": "0.4"}
VIEW = 640
"""The server's view (VIEW_MAX_SIDE); the photo below is larger, so the view is a shrunk copy."""


def _flags(values: dict[str, str]) -> list[str]:
    return [part for name, value in values.items() for part in (f"--{name}", value)]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Float reductions are summed in another order with more threads: compare at one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 700 × 820 photo (over the 640-pixel view): smooth colours plus noise."""
    generator = np.random.default_rng(5)
    rows, columns = np.mgrid[0:700, 0:820]
    pixels = np.stack([rows * 255 / 700, columns * 255 / 820, (rows + columns) % 256], axis=-1)
    pixels = np.clip(pixels + generator.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(pixels).save(folder / "photo.png")
    return folder / "photo.png"


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _overlay_of_figure(png: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The overlay inside a titled PNG: below its two-line title, from the left edge."""
    top = viz.title_pixels("image: class\nmethod")
    return _pixels(png)[top : top + shape[0], : shape[1]]


def _figure(folder: Path, stem: str, rank: int) -> Path:
    """The one figure of the target of this rank (its file name ends with the class name)."""
    (found,) = folder.glob(f"{stem}_top{rank}_*.png")
    return found


def _explain(
    photo: Path, out: Path, *extra: str, shape: tuple[int, ...]
) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """``salience explain``: method -> (raw maps of both targets, [overlay per target])."""
    argv = ["explain", str(photo), "--model", MODEL, "--size", "32", "--quiet", "-o", str(out)]
    assert cli.main([*argv, "--method", ",".join(METHODS), *extra]) == 0
    return {
        method: (
            Explanation.load(out / f"photo_{method}").attributions.numpy(),
            [
                _overlay_of_figure(_figure(out, f"photo_{method}", k).read_bytes(), shape)
                for k in (1, 2)
            ],
        )
        for method in METHODS
    }


def _batch(
    photo: Path, out: Path, *extra: str, shape: tuple[int, ...]
) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """``salience batch`` on the local engine, one worker (itself on one thread): its figures
    are titled as the command line's."""
    argv = ["batch", str(photo.parent), "--model", MODEL, "--size", "32", "--quiet"]
    argv += ["--workers", "1", "-o", str(out), "--method", ",".join(METHODS), *extra]
    assert cli.main(argv) == 0
    item = out / "items" / photo.name
    return {
        method: (
            Explanation.load(item / method).attributions.numpy(),
            [_overlay_of_figure(_figure(item, method, k).read_bytes(), shape) for k in (1, 2)],
        )
        for method in METHODS
    }


def _item(folder: Path) -> Path:
    """The one image's folder of the batch job run in ``folder``."""
    return folder / "batch" / "items" / "photo.png"


def _served(photo: Path) -> dict[str, tuple[np.ndarray, bytes]]:
    """``POST /api/explain`` on the same model, with the same options as form fields."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx2")
    from fastapi.testclient import TestClient

    from salience.loading import LoadOptions, open_model
    from salience.server import Limits, create_app

    limits = Limits(max_upload_bytes=10_000_000, max_pixels=1_000_000, time_limit=120.0)
    app = create_app([open_model(MODEL, LoadOptions(size=32))], limits=limits, workers=1)
    fields = {"methods": ",".join(METHODS), **METHOD_FLAGS, **DISPLAY_FLAGS}
    with TestClient(app) as client:
        response = client.post(
            "/api/explain", files={"image": ("photo.png", photo.read_bytes())}, data=fields
        )
        assert response.status_code == 200, response.text
        maps: dict[str, list[dict]] = {}
        for meta in response.json()["maps"]:
            maps.setdefault(meta["method"], []).append(meta)
        found = {}
        for method, metas in maps.items():
            raws = [
                np.load(io.BytesIO(client.get(m["files"]["map.npy"]).content), allow_pickle=False)
                for m in metas
            ]
            pngs = [_pixels(client.get(m["files"]["overlay.png"]).content) for m in metas]
            found[method] = (np.stack(raws)[None], pngs)
    return found


def _assert_identical(
    first: dict[str, tuple[np.ndarray, bytes]], second: dict[str, tuple[np.ndarray, bytes]]
) -> None:
    assert list(first) == list(second) == list(METHODS)
    for method in METHODS:
        (maps, pngs), (other_maps, other_pngs) = first[method], second[method]
        assert maps.dtype == other_maps.dtype and maps.shape == other_maps.shape, method
        assert maps.tobytes() == other_maps.tobytes(), f"{method}: the maps differ"
        assert len(pngs) == len(other_pngs), method
        for png, other in zip(pngs, other_pngs, strict=True):
            assert png.shape == other.shape and png.tobytes() == other.tobytes(), method


def test_explain_batch_and_the_server_draw_the_same_bytes(
    photo: Path, tmp_path: Path, one_thread: None
) -> None:
    extra = [*_flags(METHOD_FLAGS), *_flags(DISPLAY_FLAGS), "--view-size", str(VIEW)]
    served = _served(photo)
    shape = served["gradcam"][1][0].shape
    explained = _explain(photo, tmp_path / "explain", *extra, shape=shape)
    _assert_identical(explained, _batch(photo, tmp_path / "batch", *extra, shape=shape))
    _assert_identical(explained, served)
    assert max(shape[:2]) == VIEW  # drawn on the view, as the server's page is


def test_explain_and_batch_draw_the_same_bytes_on_the_whole_photo(
    photo: Path, tmp_path: Path, one_thread: None
) -> None:
    extra = [*_flags(METHOD_FLAGS), *_flags(DISPLAY_FLAGS)]
    explained = _explain(photo, tmp_path / "explain", *extra, shape=(700, 820))
    _assert_identical(explained, _batch(photo, tmp_path / "batch", *extra, shape=(700, 820)))
    for figures, stem in ((tmp_path / "explain", "photo_gradient"), (_item(tmp_path), "gradient")):
        figure = Image.open(_figure(figures, stem, 2))
        assert figure.size[0] == 820 + viz.COLORBAR_PIXELS  # the whole photo, its colorbar beside


def test_a_view_shrinks_the_photo_and_maps_the_crop_onto_it() -> None:
    preset = ImagePreset(resize_shorter=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    image = preset.prepare(np.full((300, 400, 3), 90, np.uint8))
    whole, small = View.of(image), View.of(image, 100)
    assert whole.image is image.original and small.image.shape == (75, 100, 3)
    explanation_map = torch.ones(32, 32)
    placed = small.place(explanation_map)
    assert placed.shape == (75, 100)
    # the 32-pixel crop is the middle 300 × 300 of the photo: 75 × 75 of the view, NaN beside it
    assert np.isnan(placed[:, :12]).all() and np.isnan(placed[:, -12:]).all()
    assert not np.isnan(placed[:, 13:87]).any()


def test_render_gives_the_overlay_its_png_and_thumbnail() -> None:
    preset = ImagePreset(resize_shorter=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    image = preset.prepare(np.full((64, 96, 3), 90, np.uint8))
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(1, 2, 3, 32, 32, generator=generator)
    explanation = Explanation(maps, "gradient", torch.tensor([[1, 0]]), torch.zeros(1, 2))
    display = DisplayOptions(thumbnail=16, alpha=1.0)
    rendering = render(explanation, 1, image, display)
    assert torch.equal(rendering.raw, maps[0, 1])
    assert rendering.shown.shape == (64, 96) and rendering.overlay.shape == (64, 96, 3)
    decoded = np.asarray(Image.open(io.BytesIO(rendering.png)))
    assert np.array_equal(decoded, rendering.overlay)
    assert Image.open(io.BytesIO(rendering.thumbnail_png)).size == (16, 11)
    clipped = rendering.shown[~np.isnan(rendering.shown)]
    unclipped = rendering.unclipped[~np.isnan(rendering.unclipped)]
    assert unclipped.mean() < clipped.mean() <= clipped.max() <= 1.0  # the 99% clip raises it


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"reduce": "mean"}, "reduction"),
        ({"percentile": 0.0}, "percentile"),
        ({"smooth": -1.0}, "sigma"),
        ({"alpha": 1.5}, "alpha"),
        ({"cmap": "jett"}, "did you mean jet"),
        ({"thumbnail": 8}, "thumbnail"),
        ({"view_size": 0}, "view_size"),
    ],
)
def test_bad_display_options_are_refused_in_one_line(options: dict, named: str) -> None:
    with pytest.raises(InvalidInputError, match=named) as info:
        DisplayOptions(**options)
    assert "\n" not in str(info.value)


def test_the_runner_and_the_server_share_the_one_display_class() -> None:
    from salience.runner import DisplayOptions as RunnerOptions
    from salience.server.service import DisplayOptions as ServerOptions

    assert RunnerOptions is ServerOptions is DisplayOptions


def test_the_index_page_is_the_packaged_template_filled_in() -> None:
    from importlib import resources

    from salience.runner.index import TEMPLATE, render_index

    template = resources.files("salience.runner").joinpath(TEMPLATE).read_text("utf-8")
    assert "$rows" in template and "<script>" in template
    row = {
        "status": "done",
        "key": "a.png",
        "path": "images/a.png",
        "predicted_class": "cat <b>",
        "probability": 0.5,
        "label_class": None,
        "correct": None,
        "seconds": 0.1,
        "error": None,
    }
    page = render_index([row], methods=["gradient"], model="net", auc=False)
    head = template[: template.index("$title")]
    assert page.startswith(head)
    assert "cat &lt;b&gt;" in page and "$" not in page
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"runner/templates/*"' in pyproject  # installed with the package
