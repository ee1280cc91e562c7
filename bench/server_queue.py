"""Memory held by the server's queue: uploads of a large photo waiting behind a busy worker.

Every upload is a 6000×6000 PNG of one colour (a few hundred KB, 36 Mpx decoded). The only worker
is held inside the model's forward pass, so the first job runs (and holds its decoded photo) and
the others wait in the queue. The script reports the growth of the process's resident memory
after each upload, and how many uploads the default memory budget admits before it answers
503 busy.

    PYTHONPATH=src .venv/bin/python bench/server_queue.py [--jobs 10] [--side 6000]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import salience  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from fastapi.testclient import TestClient
from torch import nn

from salience.adapters.torch import TorchAdapter
from salience.images import ImagePreset
from salience.loading import LoadedModel
from salience.server import Limits, create_app

MIB = 1024 * 1024


class HeldModel(nn.Module):
    """A tiny CNN whose forward pass sets ``entered``, then waits for ``release``: a busy worker."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.entered, self.release = entered, release
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.release.wait(600)
        return self.net(x)

    def __deepcopy__(self, _memo: dict) -> HeldModel:  # the adapter's copy shares the event
        return self


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def photo(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 120, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def queue(jobs: int, side: int, limits: Limits) -> list[tuple[int, float]]:
    """Upload ``jobs`` photos behind a held worker; (status, RSS growth in MiB) of each."""
    entered, release = threading.Event(), threading.Event()
    preset = ImagePreset(resize_shorter=224, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    model = LoadedModel(
        TorchAdapter(HeldModel(entered, release)), "held", preset, ["a", "b", "c", "d"]
    )
    app = create_app([model], limits=limits, workers=1)
    data = photo(side)
    print(f"upload: {side}×{side} PNG, {len(data):,} bytes")
    rows = []
    try:
        with TestClient(app) as client:
            start = rss()
            for _ in range(jobs):
                files = {"image": ("a.png", data, "image/png")}
                answer = client.post("/api/jobs", files=files, data={"methods": "gradient"})
                entered.wait(120)  # the first job has decoded its photo, on the worker
                rows.append((answer.status_code, (rss() - start) / MIB))
    finally:
        release.set()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--side", type=int, default=6000)
    args = parser.parse_args()
    fields = {field.name for field in dataclasses.fields(Limits)}
    has_budget = "max_pending_bytes" in fields
    unbounded = {"max_pending_bytes": 1 << 40} if has_budget else {}
    print("queue held by a busy worker, memory budget lifted:")
    for i, (status, growth) in enumerate(queue(args.jobs, args.side, Limits(**unbounded)), 1):
        print(f"  after upload {i:2d}: HTTP {status}, RSS +{growth:7.1f} MiB")
    if has_budget:
        default = Limits()
        print(f"default budget ({default.max_pending_bytes / MIB:,.0f} MiB):")
        rows = queue(args.jobs, args.side, default)
        admitted = sum(status == 202 for status, _ in rows)
        print(f"  admitted {admitted} of {args.jobs}, the rest {sorted({s for s, _ in rows})}")
        print(f"  RSS +{max(growth for _, growth in rows):.1f} MiB at most")


if __name__ == "__main__":
    main()
