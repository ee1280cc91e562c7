"""``kill PID`` (SIGTERM) stops a batch job as Ctrl-C does: its workers end with it, its
finished images are kept; and the console names each failed file and why."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from test_batch import MODEL, make_images
from test_batch_kill import interrupt_after, records, running, start_job, temporaries


def test_sigterm_stops_the_workers_and_keeps_the_finished_images(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    make_images(images, 60)
    job = start_job(images, out)
    workers = interrupt_after(job, out, 10, signal.SIGTERM)  # `kill PID`: the job only
    _, error = job.communicate()
    assert job.returncode == 128 + signal.SIGTERM, error
    assert "terminated; the finished images are kept" in error
    assert "run the same command again to resume" in error
    assert workers, "the job had no worker processes to watch"
    # the job ended its workers before it left (not they, by noticing it later)
    deadline = time.monotonic() + 2.0
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if running(pid)]
    assert temporaries(out) == []
    assert 10 <= len(records(out)) < 60


def test_the_console_names_each_failed_file_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from salience.cli import main

    make_images(tmp_path / "images", 1)
    (tmp_path / "images" / "broken.png").write_text("not an image")
    (tmp_path / "images" / "empty.png").write_bytes(b"")
    command = ["batch", str(tmp_path / "images"), "--model", MODEL, "--size", "32", "--quiet"]
    status = main([*command, "--method", "gradient", "--workers", "1", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert [Path(line.split(": ")[1]).name for line in failed] == ["broken.png", "empty.png"]
    assert all(len(line.split(": ", 2)[2]) > 5 for line in failed)  # and why
