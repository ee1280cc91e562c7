"""The benchmark record: each script adds its ratios to one JSON file per run, so a regression
shows when two runs are compared.

``make bench`` gives every script ``--json bench/results/<UTC date>-<commit>.json``; a script run
by hand writes a record only when given ``--json PATH``. The file holds the machine (CPU model,
core count, platform), the torch version, the commit, the date, and per script (its name) the
ratios it measured, ``{"ratio name": value}``; a script run again replaces its own section.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from salience.fileio import write_json_atomic


def add_record_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--json PATH``: the record file this run's ratios go to."""
    parser.add_argument(
        "--json", metavar="PATH", default=None, help="add the measured ratios to this record"
    )


def machine() -> dict[str, object]:
    """What the ratios were measured on."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def commit() -> str:
    """The checkout's commit (with ``+changes`` when the tree differs), or ``unknown``."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def write_record(args: argparse.Namespace, script: str, ratios: dict[str, float]) -> None:
    """Add ``ratios`` under ``script`` to the record ``args.json`` (nothing without one)."""
    if not args.json:
        return
    path = Path(args.json)
    record: dict = {}
    if path.exists():
        record = json.loads(path.read_text(encoding="utf-8"))
    record.update(
        {
            "machine": machine(),
            "torch": torch.__version__,
            "commit": commit(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    record.setdefault("ratios", {})[script] = {name: round(v, 4) for name, v in ratios.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    print(f"ratios recorded in {path}")
