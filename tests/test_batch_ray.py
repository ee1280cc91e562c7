"""The same job on the local engine and on Ray (a local instance started here) gives the same
maps, overlays, records and tables."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from salience.runner import JobSpec, run_job
from salience.runner.manifest import RECORD
from test_batch import MODEL, OPTIONS, make_images
from test_batch_kill import children, records, running

ray = pytest.importorskip("ray")

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def local_ray():
    path = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )
    try:
        yield
    finally:
        ray.shutdown()


def table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_local_and_ray_engines_write_identical_results(local_ray, tmp_path):
    make_images(tmp_path / "images", 7)
    (tmp_path / "images" / "zz-broken.png").write_text("not an image")
    spec = JobSpec(
        model=MODEL,
        load_options=OPTIONS,
        methods=("gradient", "gradcam", "rise"),
        options={"n_masks": 64, "seed": 3},
        auc=True,
        pixels_per_step=64,
    )
    local = run_job(spec, tmp_path / "images", tmp_path / "local", workers=2, progress=False)
    on_ray = run_job(
        spec, tmp_path / "images", tmp_path / "ray", engine="ray", workers=2, progress=False
    )
    assert ray.is_initialized()  # the caller's cluster is left running
    for summary in (local, on_ray):
        assert (summary.total, summary.explained, summary.failed) == (8, 8, 1)

    assert table(tmp_path / "local" / "results.csv") == table(tmp_path / "ray" / "results.csv")
    keys = sorted(os.listdir(tmp_path / "local" / "items"))
    assert keys == sorted(os.listdir(tmp_path / "ray" / "items"))
    for key in keys:
        folders = [tmp_path / engine / "items" / key for engine in ("local", "ray")]
        names = sorted(os.listdir(folders[0]))
        assert names == sorted(os.listdir(folders[1]))
        for name in names:
            first, second = (folder / name for folder in folders)
            if name == RECORD:
                records = [json.loads(path.read_text()) for path in (first, second)]
                for record in records:
                    record.pop("seconds")
                assert records[0] == records[1]
            elif name.endswith(".npz"):  # the zip entries carry their time: compare the maps
                with np.load(first) as a, np.load(second) as b:
                    assert np.array_equal(a["attributions"], b["attributions"])
            else:
                assert first.read_bytes() == second.read_bytes(), f"{key}/{name}"

    again = run_job(
        spec, tmp_path / "images", tmp_path / "ray", engine="ray", workers=2, progress=False
    )
    assert (again.explained, again.skipped) == (1, 7)  # only the broken image is tried again


def descendants(pid: int) -> set[int]:
    """The process's children, their children, and so on (Linux ``/proc``)."""
    found, todo = set(), [pid]
    while todo:
        new = children(todo.pop()) - found
        found |= new
        todo.extend(new)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_ray_job_leaves_no_process_behind(tmp_path, sig):
    images, out = tmp_path / "images", tmp_path / "out"
    make_images(images, 40)
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]),
    }
    command = [
        sys.executable,
        "-m",
        "salience.cli",
        "batch",
        str(images),
        "--engine",
        "ray",
        "--workers",
        "1",
        "--chunk-size",
        "1",
        "--model",
        "model_factories:slow_digits_net",
        "--size",
        "32",
        "--quiet",
        "-o",
        str(out),
    ]
    job = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while len(records(out)) < 2:
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "no record after 180 s"
            time.sleep(0.1)
        started = descendants(job.pid)
        assert started  # Ray's processes, the actor's among them
        os.kill(job.pid, sig)
        job.wait(timeout=60)
        assert job.returncode == (128 + sig if sig == signal.SIGTERM else -sig)
        deadline = time.monotonic() + 30  # Ray's agents alone would wait a minute for the cluster
        while any(map(running, started)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in started if running(pid)] == []
    finally:
        for pid in descendants(job.pid) if job.poll() is None else ():
            os.kill(pid, signal.SIGKILL)
        if job.poll() is None:
            job.kill()
