"""``kill PID`` (SIGTERM) stops a batch job as Ctrl-C does: its workers end with it, its
finished images are kept; the console names each failed file and why; the AUCs' passes run as
a batch job's bulk work."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from test_batch import MODEL, OPTIONS, make_images
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


def test_the_auc_curves_of_a_job_run_as_bulk_work(tmp_path: Path) -> None:
    # a job scores deletion and insertion on every image: its worker tells the adapter that
    # many passes follow, so a model with a fused forward-only copy builds it once and runs
    # every curve through it (one image's 2 × 17 step images alone would not ask for it)
    import torch

    from salience.evaluation.faithfulness import CausalMetric
    from salience.runner import JobSpec
    from salience.runner.inputs import collect_inputs
    from salience.runner.work import ItemWorker, read_task

    spec = JobSpec(
        model=MODEL, load_options=OPTIONS, methods=("gradient",), auc=True, pixels_per_step=64
    )
    worker = ItemWorker(spec)
    adapter = worker.loaded.adapter
    asked: list[tuple[int, bool]] = []
    forward = adapter.forward

    def spy(x: torch.Tensor, **options: object) -> torch.Tensor:
        asked.append((x.shape[0], bool(options.get("bulk", False))))
        return forward(x, **options)

    adapter.forward = spy  # type: ignore[method-assign]
    make_images(tmp_path / "images", 1)
    (item,) = collect_inputs(tmp_path / "images")
    result = worker.process(read_task(item))
    assert result.record["status"] == "done", result.record
    assert set(result.record["auc"]["gradient"]) == {"deletion", "insertion"}
    steps = [bulk for count, bulk in asked if count > 1]
    assert steps and all(steps)
    assert all(isinstance(metric, CausalMetric) and metric.bulk for metric in worker.metrics)


def test_an_error_row_of_the_index_stays_one_short_line() -> None:
    from salience.runner.index import ERROR_CHARACTERS, render_index

    error = "cannot identify image file: " + "x" * 300
    row = {
        "key": "bad.png",
        "path": "/images/bad.png",
        "status": "failed",
        "predicted_class": None,
        "probability": None,
        "label_class": None,
        "correct": None,
        "seconds": 0.1,
        "error": error,
    }
    page = render_index([row], methods=["gradient"], model="m", auc=False)
    cell = page[page.index('<td class="error"') :].split("</td>")[0]
    shown = cell.split(">", 1)[1]
    assert len(shown) == ERROR_CHARACTERS and shown.endswith("…")
    assert f'title="{error}"' in cell  # the whole message on hover
