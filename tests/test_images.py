"""Tests for salience.images: loading, conversion, errors, presets and crop geometry."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from salience.images import (
    IMAGENET_PRESET,
    CropGeometry,
    ImageLoadError,
    ImagePreset,
    as_2d_map,
    load_image,
    resize_map,
)

CAT = data.chelsea()  # (300, 451, 3) uint8
CAMERA = data.camera()  # (512, 512) uint8 grayscale


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit grey pixels, with a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bytes(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


# --- loading and conversion ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "options"),
    [("png", {}), ("bmp", {}), ("tiff", {}), ("webp", {"lossless": True})],
)
def test_lossless_formats_round_trip_exactly(
    tmp_path: Path, suffix: str, options: dict[str, object]
) -> None:
    path = tmp_path / f"cat.{suffix}"
    Image.fromarray(CAT).save(path, **options)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded), CAT)


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(_jpeg_bytes(CAT))
    loaded = np.asarray(load_image(str(path)), dtype=np.float64)
    assert loaded.shape == CAT.shape
    assert np.abs(loaded - CAT).mean() < 3.0


def test_bytes_and_pil_sources_match_path(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    Image.fromarray(CAT).save(path)
    from_bytes = np.asarray(load_image(path.read_bytes()))
    from_pil = np.asarray(load_image(Image.open(path)))
    np.testing.assert_array_equal(from_bytes, CAT)
    np.testing.assert_array_equal(from_pil, CAT)


def test_grayscale_png_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "camera.png"
    Image.fromarray(CAMERA).save(path)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (512, 512, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], CAMERA)


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(CAT, exif=exif.tobytes()))
    with Image.open(path) as raw_image:
        raw = np.asarray(raw_image.convert("RGB"))  # stored pixels, orientation not applied
    loaded = np.asarray(load_image(path))
    assert raw.shape == (300, 451, 3)
    assert loaded.shape == (451, 300, 3)
    np.testing.assert_array_equal(loaded, np.rot90(raw, k=-1))


def test_sixteen_bit_png_ramp_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.array([0, 257, 32896, 65535, 1000], dtype=np.uint16), (3, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "I;16"  # really a 16-bit file
    loaded = np.asarray(load_image(path))
    np.testing.assert_array_equal(loaded[0, :, 0], [0, 1, 128, 255, 4])
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])


def test_uint16_and_float_arrays_are_scaled() -> None:
    np.testing.assert_array_equal(
        np.asarray(load_image(np.array([[0, 32896, 65535]], dtype=np.uint16)))[0, :, 1],
        [0, 128, 255],
    )
    np.testing.assert_array_equal(
        np.asarray(load_image(np.array([[0.0, 0.5, 1.0]])))[0, :, 1], [0, 128, 255]
    )


def test_float_and_int32_pil_modes() -> None:
    unit_floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit_floats.mode == "F"
    np.testing.assert_array_equal(np.asarray(load_image(unit_floats))[0, :, 0], [0, 128, 255])
    sixteen_bit_in_int32 = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32))
    assert sixteen_bit_in_int32.mode == "I"
    np.testing.assert_array_equal(
        np.asarray(load_image(sixteen_bit_in_int32))[0, :, 0], [0, 128, 255]
    )


def test_rgba_alpha_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # black
    rgba[0, 0, 3] = 0  # fully transparent -> white
    rgba[0, 1, 3] = 255  # opaque -> black
    rgba[1, :, 3] = 128  # half -> mid grey
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    loaded = np.asarray(load_image(path)).astype(int)
    np.testing.assert_array_equal(loaded[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(loaded[0, 1], [0, 0, 0])
    assert np.all(np.abs(loaded[1] - 127) <= 1)
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), loaded)  # array path agrees


def test_la_and_palette_transparency_become_white() -> None:
    la = Image.new("LA", (1, 1), (0, 0))
    np.testing.assert_array_equal(np.asarray(load_image(la))[0, 0], [255, 255, 255])
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    loaded = np.asarray(load_image(buffer.getvalue()))
    np.testing.assert_array_equal(loaded[0], [[255, 0, 0], [255, 255, 255]])


def test_unconvertible_mode_is_reported() -> None:
    with pytest.raises(ImageLoadError, match="Pillow cannot convert mode 'La' to RGB"):
        load_image(Image.new("La", (2, 2)))


def test_cmyk_is_converted() -> None:
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # white
    cmyk.putpixel((1, 0), (0, 255, 255, 0))  # red
    np.testing.assert_array_equal(np.asarray(load_image(cmyk))[0], [[255, 255, 255], [255, 0, 0]])


# --- errors ---------------------------------------------------------------------------------


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"nope\.png does not exist"):
        load_image(tmp_path / "nope.png")


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello")
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    assert str(caught.value) == (
        f"{path} is not an image Pillow can read (PNG, JPEG, BMP, TIFF, WebP)"
    )


def test_truncated_jpeg_is_reported(tmp_path: Path) -> None:
    whole = _jpeg_bytes(CAT)
    path = tmp_path / "half.jpg"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageLoadError, match="is truncated or corrupt") as caught:
        load_image(path)
    assert "\n" not in str(caught.value)


def test_huge_image_is_rejected_from_header_without_pillow_warnings(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(20_000, 20_000))
    limit_before = Image.MAX_IMAGE_PIXELS
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        with pytest.raises(ImageLoadError) as caught:
            load_image(path)
    assert time.perf_counter() - started < 1.0
    assert str(caught.value) == (
        f"{path} has 400,000,000 pixels, more than the limit of 50,000,000; "
        "downscale it or raise max_pixels"
    )
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_pillow_bomb_limit_does_not_apply_under_own_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # far below 300 x 451
    path = tmp_path / "cat.png"
    Image.fromarray(CAT).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path)
    assert loaded.size == (451, 300)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_concurrent_loads_restore_pillow_limit(tmp_path: Path) -> None:
    path = tmp_path / "camera.png"
    Image.fromarray(CAMERA).save(path)
    limit_before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(lambda _: load_image(path).size, range(32)))
    assert sizes == [(512, 512)] * 32
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_bytes_that_are_not_an_image() -> None:
    with pytest.raises(ImageLoadError, match=r"^image data \(5 bytes\) is not an image Pillow"):
        load_image(b"hello")


def test_max_pixels_applies_to_pil_and_array_sources() -> None:
    with pytest.raises(ImageLoadError, match="has 10,000 pixels, more than the limit of 9,999"):
        load_image(Image.new("L", (100, 100)), max_pixels=9_999)
    with pytest.raises(ImageLoadError, match="has 10,000 pixels"):
        load_image(np.zeros((100, 100), dtype=np.uint8), max_pixels=9_999)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 2), dtype=np.uint8), r"pass \(H, W\), \(H, W, 3\) or \(H, W, 4\)"),
        (np.zeros((4, 4), dtype=np.int64), "dtype int64 are not supported"),
        (np.full((4, 4), 2.0), r"must lie in \[0, 1\], got \[2, 2\]"),
        (np.full((4, 4), np.nan), "NaN or infinite"),
    ],
)
def test_bad_arrays_are_rejected(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageLoadError, match=message):
        load_image(array)


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError, match="got int"):
        load_image(42)  # type: ignore[arg-type]


# --- presets --------------------------------------------------------------------------------


def test_imagenet_preset_shapes_and_geometry() -> None:
    prepared = IMAGENET_PRESET.prepare(CAT)
    assert prepared.tensor.shape == (1, 3, 224, 224)
    assert prepared.tensor.dtype == torch.float32
    assert prepared.display.shape == (224, 224, 3)
    assert prepared.display.dtype == np.uint8
    np.testing.assert_array_equal(prepared.original, CAT)
    assert prepared.geometry == CropGeometry(
        original_size=(300, 451), resized_size=(256, 384), crop_box=(16, 80, 224, 224)
    )
    shown = IMAGENET_PRESET.denormalize(prepared.tensor).astype(int)
    assert np.abs(shown - prepared.display).max() <= 1


def test_normalize_matches_formula_and_round_trips() -> None:
    preset = ImagePreset(None, None, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    pixel = np.array([[[255, 0, 51]]], dtype=np.uint8)
    torch.testing.assert_close(preset.normalize(pixel)[0, :, 0, 0], torch.tensor([1.0, -1.0, 0.2]))
    image = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    back = IMAGENET_PRESET.denormalize(IMAGENET_PRESET.normalize(image)).astype(int)
    assert back.shape == image.shape
    assert np.abs(back - image).max() <= 1


def test_preset_without_resize_or_crop_keeps_the_image() -> None:
    prepared = ImagePreset(None, None, mean=(0, 0, 0), std=(1, 1, 1)).prepare(CAT)
    np.testing.assert_array_equal(prepared.display, CAT)
    np.testing.assert_allclose(prepared.tensor[0].permute(1, 2, 0).numpy(), CAT / 255, atol=1e-6)


def test_preset_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="interpolation must be one of 'bicubic'"):
        ImagePreset(256, 224, (0, 0, 0), (1, 1, 1), interpolation="cubic")
    with pytest.raises(ValueError, match="std values must be positive"):
        ImagePreset(256, 224, (0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="mean must have 3 values"):
        ImagePreset(256, 224, (0, 0), (1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop 400x400 is larger than the resized image 256x384"):
        ImagePreset(256, 400, (0, 0, 0), (1, 1, 1)).prepare(CAT)


# --- mapping saliency back to the original --------------------------------------------------


def _expected_span(count: int, scale: float, start: int, length: int) -> tuple[int, int]:
    """First and last original pixel whose centre lies inside the crop span."""
    first = int(np.ceil(start / scale - 0.5))
    last = int(np.floor((start + length) / scale - 0.5))
    return first, last


def test_to_original_of_ones_fills_crop_and_leaves_nan_outside() -> None:
    geometry = IMAGENET_PRESET.prepare(CAT).geometry
    mapped = geometry.to_original(np.ones((7, 7)))
    assert mapped.shape == (300, 451)
    seen = ~np.isnan(mapped)
    rows = np.flatnonzero(seen.any(axis=1))
    columns = np.flatnonzero(seen.any(axis=0))
    # rows 16..240 of the 256-high resize are rows 18.75..281.25 of the original
    assert (rows[0], rows[-1]) == _expected_span(300, 256 / 300, 16, 224) == (19, 280)
    assert (columns[0], columns[-1]) == _expected_span(451, 384 / 451, 80, 224) == (94, 356)
    assert seen[19:281, 94:357].all()
    assert seen.sum() == (281 - 19) * (357 - 94)
    np.testing.assert_allclose(mapped[seen], 1.0)


def test_to_original_keeps_a_left_to_right_ramp_monotone() -> None:
    geometry = IMAGENET_PRESET.prepare(CAT).geometry
    ramp = np.tile(np.linspace(0.0, 1.0, 14), (14, 1))
    mapped = geometry.to_original(ramp)[19:281, 94:357]
    steps = np.diff(mapped, axis=1)
    assert (steps >= -1e-12).all()
    assert mapped[:, -1].min() > mapped[:, 0].max()
    np.testing.assert_allclose(mapped[0], mapped[-1])  # no vertical change


def test_to_original_is_identity_without_resize_or_crop() -> None:
    geometry = CropGeometry((5, 6), (5, 6), (0, 0, 5, 6))
    saliency = np.arange(30.0).reshape(5, 6)
    np.testing.assert_array_equal(geometry.to_original(saliency), saliency)


def test_to_original_undoes_a_pure_2x_upscale() -> None:
    geometry = CropGeometry(original_size=(4, 4), resized_size=(8, 8), crop_box=(0, 0, 8, 8))
    on_resized = np.kron(np.arange(16.0).reshape(4, 4), np.ones((2, 2)))  # blocky 2x
    np.testing.assert_allclose(geometry.to_original(on_resized), np.arange(16.0).reshape(4, 4))


def test_crop_geometry_and_maps_are_validated() -> None:
    with pytest.raises(ValueError, match="must lie inside resized_size"):
        CropGeometry((10, 10), (10, 10), (5, 0, 8, 10))
    with pytest.raises(ValueError, match=r"2-D map \(h, w\); got shape \(1, 7, 7\)"):
        as_2d_map(np.ones((1, 7, 7)))
    with pytest.raises(ValueError, match="infinite"):
        resize_map(np.array([[np.inf]]), (2, 2))


def test_resize_map_bilinear_known_values() -> None:
    resized = resize_map(np.array([[0.0, 1.0]]), (1, 4))
    np.testing.assert_allclose(resized, [[0.0, 0.25, 0.75, 1.0]])
