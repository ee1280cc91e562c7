"""A job over 200 images interrupted twice (Ctrl-C, then SIGKILL) and run again to the end.

``salience batch`` runs as a real command in its own process group; the test watches the
finished records and interrupts it midway, as a person (Ctrl-C) or the machine (SIGKILL) would.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_batch import RECORD, make_images, method_files

IMAGES = 200
TESTS = Path(__file__).resolve().parent
SOURCE = TESTS.parent / "src"


def start_job(images: Path, out: Path) -> subprocess.Popen:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SOURCE), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "salience.cli",
        "batch",
        str(images),
        "--model",
        "model_factories:slow_digits_net",
        "--size",
        "32",
        "--method",
        "gradient",
        "--workers",
        "2",
        "--quiet",
        "-o",
        str(out),
    ]
    return subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def records(out: Path) -> list[Path]:
    return sorted((out / "items").glob(f"*/{RECORD}"))


def children(pid: int) -> set[int]:
    """The process's children (Linux ``/proc``); empty where that is not available."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found.update(int(child) for child in task.read_text().split())
    return found


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def interrupt_after(job: subprocess.Popen, out: Path, count: int, sig: int) -> set[int]:
    """Send ``sig`` to the job's process group once ``count`` items are finished; wait for it.

    Returns the job's child processes seen just before.
    """
    deadline = time.monotonic() + 90
    while len(records(out)) < count:
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, f"only {len(records(out))} records after 90 s"
        time.sleep(0.02)
    workers = children(job.pid)
    os.killpg(job.pid, sig) if sig == signal.SIGINT else os.kill(job.pid, sig)
    job.wait(timeout=30)
    return workers


def temporaries(out: Path) -> list[Path]:
    return [path for path in out.rglob("*") if path.name.endswith(".tmp")]


def test_killed_twice_then_rerun_gives_exactly_one_result_per_image(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    paths = make_images(images, IMAGES)

    first = start_job(images, out)
    interrupt_after(first, out, 50, signal.SIGINT)  # Ctrl-C
    _, error = first.communicate()
    assert first.returncode == 130, error
    assert "run the same command again to resume" in error
    assert temporaries(out) == []  # Ctrl-C leaves no half-written file
    kept = {path: path.stat().st_mtime_ns for path in records(out)}
    assert 50 <= len(kept) < IMAGES

    second = start_job(images, out)
    workers = interrupt_after(second, out, len(kept) + 50, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL
    finished_before = len(records(out))
    assert finished_before < IMAGES
    deadline = time.monotonic() + 15  # the killed job's workers leave by themselves
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if running(pid)]

    third = start_job(images, out)
    output, error = third.communicate(timeout=120)
    assert third.returncode == 0, error
    assert f"{IMAGES - finished_before} explained now" in output
    assert f"{finished_before} finished before" in output

    assert temporaries(out) == []
    assert len(records(out)) == IMAGES
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # not redone
    assert sorted(os.listdir(out / "items")) == sorted(path.name for path in paths)
    for path in paths:
        assert set(os.listdir(out / "items" / path.name)) == {
            RECORD,
            "image.thumb.png",
            *method_files("gradient"),
        }
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["path"]).name for row in rows] == [path.name for path in paths]
    assert {row["status"] for row in rows} == {"done"}
