"""Peak memory and seconds of preparing the largest images salience accepts, and of drawing on them.

Each case is a file of at most the default pixel limit (50 million pixels, ``salience explain``'s
``max_pixels``) or one that used to blow up: 49-megapixel photos as PNG (RGB, RGBA, 16-bit grey),
JPEG and float TIFF, and strips 65,000×1 and 50,000,000×1 pixels. For each, a fresh child process
(nothing decoded before it) imports ``salience.images`` and ``salience.viz``, then times, as
``salience explain`` does for one map: ``IMAGENET_PRESET.prepare(path)`` (load, decode, resize,
crop, normalize, display copy), ``geometry.to_original`` of a 7×7 map (a CAM's size) onto the
display copy, ``viz.overlay`` on it and ``viz.encode_png``. It reports the child's peak resident
set size (``VmHWM``: the whole process, torch's import included) and the part of it above the
resident size after the imports, and the seconds of the work.

Targets, for every case: peak RSS ≤ 1 GiB and ≤ 5 s; the last columns give the measured values
as fractions of them (≤ 1 meets the target). The stored image's RGB size (3 bytes a pixel) is
given for scale: a full decode cannot take less, the display copy and the crop are bounded.

Every child runs under an address-space limit (``--limit-gib``, default 8), so a build that
would need more fails that case with ``MemoryError`` instead of taking the machine's memory.

Run by hand: ``PYTHONPATH=src python bench/image_limits.py [--repeats 3] [--cases png,jpeg]``;
making the files takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

GIB = 1 << 30
TARGET_PEAK_BYTES = GIB
TARGET_SECONDS = 5.0
SIDE = 7000  # 49,000,000 pixels
TIMES = ("prepare", "seconds", "encode")


def _photo(side: int) -> np.ndarray:
    """The bundled cat photo enlarged to ``side``², with a little noise so it compresses as a
    photo does."""
    from skimage import data

    enlarged = np.asarray(
        Image.fromarray(data.chelsea()).resize((side, side), Image.Resampling.BILINEAR)
    )
    noise = np.random.default_rng(0).integers(-6, 7, enlarged.shape, dtype=np.int16)
    return np.clip(enlarged + noise, 0, 255).astype(np.uint8)


def _chelsea(path: Path) -> None:
    from skimage import data

    Image.fromarray(data.chelsea()).save(path)


def _png_rgb(path: Path) -> None:
    Image.fromarray(_photo(SIDE)).save(path, compress_level=1)


def _png_rgba(path: Path) -> None:
    photo = _photo(SIDE)
    alpha = np.broadcast_to(np.linspace(0, 255, SIDE, dtype=np.uint8), (SIDE, SIDE))
    Image.fromarray(np.dstack([photo, alpha])).save(path, compress_level=1)


def _png_16bit(path: Path) -> None:
    grey = _photo(SIDE)[..., 0].astype(np.uint16) * 257
    Image.fromarray(grey).save(path, compress_level=1)


def _jpeg(path: Path) -> None:
    Image.fromarray(_photo(SIDE)).save(path, quality=90)


def _tiff_float(path: Path) -> None:
    values = _photo(SIDE)[..., 1].astype(np.float32) * 4.0  # 0..1020: min-max stretched
    Image.fromarray(values).save(path, format="TIFF")


def _strip(width: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        ramp = (np.arange(width, dtype=np.uint32) % 256).astype(np.uint8)[np.newaxis]
        Image.fromarray(ramp).save(path)

    return make


CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "photo": ("chelsea 451×300 PNG (for scale)", _chelsea),
    "png": (f"{SIDE}×{SIDE} RGB PNG", _png_rgb),
    "png-rgba": (f"{SIDE}×{SIDE} RGBA PNG", _png_rgba),
    "png-16bit": (f"{SIDE}×{SIDE} 16-bit grey PNG", _png_16bit),
    "jpeg": (f"{SIDE}×{SIDE} JPEG, quality 90", _jpeg),
    "tiff-float": (f"{SIDE}×{SIDE} float32 TIFF", _tiff_float),
    "strip-65000": ("65,000×1 grey PNG", _strip(65_000)),
    "strip-50M": ("50,000,000×1 grey PNG (at the limit)", _strip(50_000_000)),
}
SUFFIXES = {"jpeg": ".jpg", "tiff-float": ".tif"}


def _memory_bytes() -> dict[str, int]:
    """VmRSS and VmHWM of this process, bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def child(path: Path) -> dict[str, float]:
    """Prepare ``path``, map a 7×7 map onto the display copy, overlay and encode it."""
    from salience import viz
    from salience.images import IMAGENET_PRESET

    viz.colorize(np.zeros((1, 1)))  # matplotlib's colormaps: imported before timing
    after_imports = _memory_bytes()["VmRSS"]
    start = time.perf_counter()
    prepared = IMAGENET_PRESET.prepare(path)
    prepared_at = time.perf_counter()
    placed = prepared.geometry.to_original(np.random.default_rng(0).random((7, 7)))
    drawn = viz.overlay(prepared.original, placed)
    drawn_at = time.perf_counter()
    encoded = viz.encode_png(drawn)  # zlib level 6, as viz.save_png
    peak = _memory_bytes()["VmHWM"]
    return {
        "prepare": prepared_at - start,
        "seconds": drawn_at - start,
        "encode": time.perf_counter() - drawn_at,
        "peak": peak,
        "above_imports": peak - after_imports,
        "display": list(prepared.original.shape[:2]),
        "png_bytes": len(encoded),
    }


def run_child(path: Path, limit_bytes: int) -> dict[str, float] | str:
    """One measurement in a fresh process; a string says why it failed."""

    def limit_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(path)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit_address_space,
        timeout=600,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit status {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="children per case (default 3)")
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}"
    )
    parser.add_argument(
        "--limit-gib", type=float, default=8.0, help="address space of each child (default 8)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Make the files, measure each case ``--repeats`` times, print the table."""
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return 0
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases {', '.join(unknown)}; choose from {', '.join(CASES)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cpu_snapshot, footer, machine_line

    print("Peak memory and time from image file to overlay (bench/image_limits.py)")
    print(machine_line())
    print(f"targets: peak RSS <= {TARGET_PEAK_BYTES / GIB:g} GiB, <= {TARGET_SECONDS:g} s\n")
    row = "{:<11} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>6} {:>6}"
    columns = ("case", "file MiB", "RGB MiB", "peak MiB", "work MiB", "prepare", "+overlay")
    print(row.format(*columns, "PNG", "display", "peak/T", "time/T"))
    start = cpu_snapshot()
    with tempfile.TemporaryDirectory(prefix="salience-image-limits-") as folder:
        for name in names:
            description, make = CASES[name]
            path = Path(folder) / (name + SUFFIXES.get(name, ".png"))
            make(path)
            with Image.open(path) as stored:
                pixels = stored.width * stored.height
            runs = [run_child(path, int(args.limit_gib * GIB)) for _ in range(args.repeats)]
            failed = [run for run in runs if isinstance(run, str)]
            file_mib = path.stat().st_size / 2**20
            path.unlink()
            if failed:
                print(f"{name:<11} {file_mib:>8.1f} FAILED: {failed[0]}")
                continue
            peak = max(run["peak"] for run in runs)
            work = max(run["above_imports"] for run in runs)
            seconds = {key: statistics.median(run[key] for run in runs) for key in TIMES}
            sizes = (file_mib, pixels * 3 / 2**20, peak / 2**20, work / 2**20)
            ratios = (peak / TARGET_PEAK_BYTES, seconds["seconds"] / TARGET_SECONDS)
            cells = [f"{mib:.1f}" for mib in sizes] + [f"{seconds[key]:.2f}" for key in TIMES]
            shown = "×".join(map(str, runs[0]["display"][::-1]))
            print(row.format(name, *cells, shown, *(f"{ratio:.2f}" for ratio in ratios)))
            print(f"{'':<11} {description}")
    print(
        "\npeak: the child's VmHWM, max over repeats; work: peak minus RSS after the imports;"
        "\nprepare, +overlay: seconds to the PreparedImage and to the drawn overlay (the time"
        "\ntarget), PNG: encoding the overlay after that (level 6, as viz.save_png), medians;"
        "\ndisplay: the copy overlays are drawn on (width×height)"
    )
    print(footer(start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
