"""Images whose decoding could outgrow what the model needs: elongated and very large images,
Pillow's decompression-bomb guard across threads, float images with non-finite pixels."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

import salience
from salience.cli import main
from salience.images import (
    DISPLAY_MAX_SIDE,
    IMAGENET_PRESET,
    ImageLoadError,
    ImagePreset,
    load_image,
)

SRC = Path(salience.__file__).resolve().parents[1]  # the salience under test, in the child too
HEADROOM = 1 << 30  # address space the child may add while preparing: far below any blow-up


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _run_with_bounded_memory(code: str) -> dict:
    """Run ``code`` in a child whose address space may grow by at most ``HEADROOM``.

    The child imports salience first, then caps its address space (RLIMIT_AS) at its size
    then plus ``HEADROOM``: an allocation beyond fails at once with MemoryError instead of
    taking the machine's memory. ``code`` sets ``result``, printed as JSON.
    """
    preamble = (
        "import json, resource\n"
        "from pathlib import Path\n"
        "import salience.images\n"
        "size = next(int(line.split()[1]) * 1024 for line in\n"
        "    Path('/proc/self/status').read_text().splitlines() if line.startswith('VmSize:'))\n"
        f"limit = size + {HEADROOM}\n"
        "hard = resource.getrlimit(resource.RLIMIT_AS)[1]\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, hard))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", preamble + code + "\nprint(json.dumps(result))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


# --- elongated images: the resize before the crop is never made ----------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_elongated_images_are_prepared_within_bounded_memory() -> None:
    # 65000x1 and 2000x1 resize to 256x16,640,000 and 256x512,000 before the 224 crop (12.8 GB
    # and 393 MB of RGB); 40,000,000x1 is within a 40 Mpx limit and resizes to 256x10**10.
    result = _run_with_bounded_memory(
        "import io\n"
        "from PIL import Image\n"
        "from salience.images import IMAGENET_PRESET\n"
        "result = {}\n"
        "for width in (65_000, 2_000, 40_000_000):\n"
        "    buffer = io.BytesIO()\n"
        "    Image.new('L', (width, 1), 200).save(buffer, format='PNG')\n"
        "    prepared = IMAGENET_PRESET.prepare(buffer.getvalue(), max_pixels=40_000_000)\n"
        "    result[width] = [prepared.display.shape, prepared.original.shape,\n"
        "                     int(prepared.display.min()), int(prepared.display.max())]\n"
    )
    for width, shown in (("65000", 2048), ("2000", 2000), ("40000000", 2048)):
        crop, original, low, high = result[width]
        assert crop == [224, 224, 3]
        assert original == [1, shown, 3]
        assert low == high == 200  # the crop of a uniform strip is that grey


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_without_a_crop_an_elongated_image_is_refused_before_resizing() -> None:
    result = _run_with_bounded_memory(
        "import io\n"
        "from PIL import Image\n"
        "from salience.images import ImageLoadError, ImagePreset\n"
        "no_crop = ImagePreset(256, None, mean=(0, 0, 0), std=(1, 1, 1))\n"
        "buffer = io.BytesIO()\n"
        "Image.new('L', (65_000, 1)).save(buffer, format='PNG')\n"
        "try:\n"
        "    no_crop.prepare(buffer.getvalue())\n"
        "    result = {'size': buffer.tell(), 'error': None}\n"
        "except ImageLoadError as error:\n"
        "    result = {'size': buffer.tell(), 'error': str(error)}\n"
    )
    assert result["size"] < 300  # a tiny file
    assert result["error"] == (
        f"image data ({result['size']} bytes) (1x65000) would be resized to 256x16640000 = "
        "4,259,840,000 pixels for the model, more than the limit of 50,000,000; give the preset "
        "a crop, crop the image to a less elongated shape, or raise max_pixels"
    )


def test_the_crop_from_the_original_equals_resizing_then_cropping() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (301, 457, 3), dtype=np.uint8)
    prepared = IMAGENET_PRESET.prepare(photo)
    resized = Image.fromarray(photo).resize((388, 256), Image.Resampling.BILINEAR)
    top, left, height, width = prepared.geometry.crop_box
    expected = np.asarray(resized)[top : top + height, left : left + width].astype(int)
    # Pillow computes the filter positions of a box from its edges, not from the whole image:
    # the same weights up to float rounding, so an 8-bit result may round the other way.
    assert np.abs(prepared.display.astype(int) - expected).max() <= 1


# --- large images: the display copy and reduced JPEG decoding ------------------------------


def _ramps(height: int, width: int) -> np.ndarray:
    """Red rises left to right, green top to bottom, blue along the diagonal: no symmetry."""
    y, x = np.mgrid[0:height, 0:width]
    red, green = 255 * x / (width - 1), 255 * y / (height - 1)
    return np.stack([red, green, (red + green) / 2], axis=-1).round().astype(np.uint8)


def test_the_display_copy_is_capped_and_the_geometry_maps_onto_it() -> None:
    prepared = IMAGENET_PRESET.prepare(_ramps(1000, 3000))
    assert prepared.source_size == (1000, 3000)
    assert prepared.original.shape == (683, DISPLAY_MAX_SIDE, 3)
    assert prepared.geometry.original_size == (683, DISPLAY_MAX_SIDE)
    # The model's view mapped back lands where the display copy shows the same colours.
    red_seen = prepared.display[..., 0].astype(float)
    on_copy = prepared.geometry.to_original(red_seen)
    inside = ~np.isnan(on_copy)
    assert inside.any(axis=0).sum() == pytest.approx(224 / 768 * DISPLAY_MAX_SIDE, abs=2)
    # a ramp of 255 levels over 2048 columns: a misplaced column would be off by ~0.12 level
    # per column; bilinear resampling of a linear ramp is exact up to 8-bit rounding (±1)
    difference = on_copy[inside] - prepared.original[..., 0][inside]
    assert np.abs(difference).max() <= 2


def test_prepare_checks_display_max_side() -> None:
    with pytest.raises(ValueError, match="display_max_side must be a positive int"):
        IMAGENET_PRESET.prepare(_ramps(8, 8), display_max_side=0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_reduced_jpeg_decode_keeps_the_geometry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orientation: int
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    # odd sizes: a reduced decode leaves a fraction of the last row and column unused
    Image.fromarray(_ramps(803, 1203)).save(path, quality=95, exif=exif.tobytes())
    scales = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        answer = draft(self, mode, size)
        scales.append(self.decoderconfig[0] if answer else 1)
        return answer

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    small = ImagePreset(64, 56, mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear")
    reduced = small.prepare(path, display_max_side=128)
    assert scales == [4]  # 2 x (the 64-pixel resize, the 128-pixel copy) fits in a quarter
    full = small.prepare(load_image(path), display_max_side=128)  # a PIL image: full decode
    assert reduced.geometry == full.geometry
    assert reduced.source_size == full.source_size
    # JPEG's 1/4 decode averages 4x4 blocks, a ramp stays a ramp: a wrong flip or shift of the
    # box would move the ramps by tens of levels
    for mine, reference in ((reduced.display, full.display), (reduced.original, full.original)):
        assert np.abs(mine.astype(int) - reference).mean() < 1.0
        assert np.abs(mine.astype(int) - reference).max() <= 6


# --- Pillow's decompression-bomb guard stays on for everyone else --------------------------


def test_loading_never_lifts_pillows_bomb_guard_for_other_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # bombs above 2,000 pixels: tiny ones
    bomb = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(bomb)
    photo = _png_bytes(Image.fromarray(_ramps(64, 64)))  # 4,096 pixels: over Pillow's limit
    loads = 0
    stop = threading.Event()

    def load_repeatedly() -> None:
        nonlocal loads
        while not stop.is_set():
            assert load_image(photo).size == (64, 64)  # load_image applies its own limit
            loads += 1

    loader = threading.Thread(target=load_repeatedly)
    loader.start()
    accepted = tries = 0
    try:
        while tries < 2_000 and (tries < 300 or loads < 300):
            tries += 1
            try:
                with Image.open(bomb) as image:
                    image.load()
                accepted += 1
            except Image.DecompressionBombError:
                pass
    finally:
        stop.set()
        loader.join()
    assert loads > 0
    assert accepted == 0, f"another thread's bomb was accepted {accepted} times of {tries}"
    assert Image.MAX_IMAGE_PIXELS == 1_000


# --- float images with NaN or infinite pixels -----------------------------------------------


def _float_tiff(path: Path) -> Path:
    values = np.linspace(0.0, 1.0, 40 * 30, dtype=np.float32).reshape(30, 40)
    values[3, 4] = values[10, 20] = np.nan
    values[5, 6] = np.inf
    values[7, 8] = -np.inf
    image = Image.fromarray(values)
    assert image.mode == "F"
    image.save(path, format="TIFF")
    return path


def test_a_float_tiff_with_non_finite_pixels_is_refused_with_a_count(tmp_path: Path) -> None:
    path = _float_tiff(tmp_path / "depth.tif")
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    assert str(caught.value) == (
        f"{path} has 4 of 1,200 pixels that are NaN or infinite; replace them with finite "
        "values (e.g. numpy.nan_to_num) and load the result"
    )
    finite = np.nan_to_num(np.asarray(Image.open(path)), nan=0.5, posinf=1.0, neginf=0.0)
    assert np.asarray(load_image(finite)).max() == 255  # the advised fix loads


def test_the_cli_reports_a_non_finite_tiff_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _float_tiff(tmp_path / "depth.tif")
    output = tmp_path / "out"
    status = main(["explain", str(path), "--method", "gradient", "-o", str(output)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("salience: error: ") and "4 of 1,200 pixels" in err
    assert not output.exists() or not any(output.iterdir())
