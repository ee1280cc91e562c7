"""Batch jobs on the local engine: inputs, the results table against references, resuming."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salience import viz
from salience.api import explain_all
from salience.evaluation.faithfulness import deletion, insertion
from salience.explanation import Explanation
from salience.loading import LoadOptions, open_model
from salience.runner import JobSpec, collect_inputs, run_job
from salience.runner.manifest import RECORD, JobFolder

MODEL = "model_factories:seeded_digits_net"
OPTIONS = LoadOptions(size=32)
CLASS_FILES = {"image.thumb.png", RECORD}


def make_images(folder: Path, count: int, *, seed: int = 0, prefix: str = "im") -> list[Path]:
    """``count`` PNGs of 40×48 pixels: a random colour plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        base = generator.integers(0, 256, 3)
        pixels = np.clip(base + generator.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def method_files(method: str) -> set[str]:
    return {f"{method}.npz", f"{method}.json", f"{method}.png", f"{method}.thumb.png"}


# -- inputs ----------------------------------------------------------------------------------
def test_folder_glob_and_manifests_name_the_same_images(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = tmp_path / "data"
    make_images(images / "cats", 2)
    make_images(images / "dogs", 1)
    (images / "notes.txt").write_text("not an image")
    make_images(images / ".cache", 1)  # hidden: skipped
    found = collect_inputs(images)
    assert [item.key for item in found] == ["cats__im000.png", "cats__im001.png", "dogs__im000.png"]
    assert [Path(item.path) for item in found] == [
        images / "cats/im000.png",
        images / "cats/im001.png",
        images / "dogs/im000.png",
    ]

    by_glob = collect_inputs(str(images / "*" / "*.png"))
    assert [item.key for item in by_glob] == [item.key for item in found]

    manifest = images / "list.csv"
    manifest.write_text("path,label\ncats/im001.png,3\ndogs/im000.png,\n")
    listed = collect_inputs(manifest)
    assert [(item.key, item.label) for item in listed] == [
        ("cats__im001.png", "3"),
        ("dogs__im000.png", None),
    ]
    assert Path(listed[0].path) == images / "cats/im001.png"

    table = pa.table({"path": ["cats/im000.png"], "label": [7]})
    pq.write_table(table, images / "list.parquet")
    (item,) = collect_inputs(images / "list.parquet")
    assert (item.key, item.label, Path(item.path)) == ("cats__im000.png", "7", Path(found[0].path))


def test_bad_inputs_are_refused_with_the_fix(tmp_path):
    make_images(tmp_path, 1)
    (tmp_path / "no-path.csv").write_text("file,label\nim000.png,1\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        collect_inputs(tmp_path / "no-path.csv")
    (tmp_path / "twice.csv").write_text("path\nim000.png\n./im000.png\n")
    with pytest.raises(ValueError, match=r"twice \(rows 1 and 2\)"):
        collect_inputs(tmp_path / "twice.csv")
    with pytest.raises(FileNotFoundError, match="no folder, file or pattern"):
        collect_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        collect_inputs(tmp_path / "empty")
    (tmp_path / "labels.csv").write_text("path,label\nim000.png,zebra\n")
    spec = JobSpec(model=MODEL, load_options=OPTIONS)
    with pytest.raises(ValueError, match=r"'zebra' .* neither a class name nor a class index"):
        run_job(spec, tmp_path / "labels.csv", tmp_path / "out", workers=1, progress=False)
    with pytest.raises(ValueError, match="one class per image"):
        run_job(
            JobSpec(model=MODEL, load_options=OPTIONS, target="top-2", auc=True),
            tmp_path,
            tmp_path / "out",
            workers=1,
            progress=False,
        )
    assert not (tmp_path / "out" / "items").exists()  # refused before any work


# -- one job, checked against references computed here ---------------------------------------
@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    paths = make_images(root / "images", 6)
    (root / "images" / "broken.png").write_text("a text file named like an image")
    names = [path.name for path in paths] + ["broken.png"]
    labels = ["class 3", "3", "5", "", "class 5", "3", "3"]
    lines = ["path,label", *(f"images/{n},{label}" for n, label in zip(names, labels, strict=True))]
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    spec = JobSpec(
        model=MODEL,
        load_options=OPTIONS,
        methods=("gradient", "gradcam"),
        auc=True,
        pixels_per_step=64,
    )
    summary = run_job(spec, root / "data.csv", root / "out", workers=2, progress=False)
    return root, paths, labels, summary


def test_table_matches_predictions_and_labels_computed_here(finished_job):
    root, paths, labels, summary = finished_job
    assert (summary.total, summary.explained, summary.skipped, summary.failed) == (7, 7, 0, 1)
    rows = read_csv(root / "out" / "results.csv")
    assert [Path(row["path"]).name for row in rows] == [p.name for p in paths] + ["broken.png"]
    model = open_model(MODEL, OPTIONS)
    label_index = {"class 3": 3, "3": 3, "5": 5, "class 5": 5, "": None}
    for row, path, label in zip(rows, paths, labels, strict=False):
        probabilities = torch.softmax(model.adapter.forward(model.preset.prepare(path).tensor), 1)
        predicted = int(probabilities.argmax())
        assert row["status"] == "done"
        assert int(row["predicted"]) == predicted
        assert row["predicted_class"] == model.class_names[predicted]
        assert float(row["probability"]) == pytest.approx(float(probabilities.max()), rel=1e-5)
        expected = label_index[label]
        assert row["label"] == ("" if expected is None else str(expected))
        assert row["correct"] == ("" if expected is None else str(predicted == expected))
    broken = rows[-1]
    assert broken["status"] == "failed"
    assert "is not an image Pillow can read" in broken["error"]
    assert broken["predicted"] == broken["probability"] == ""
    assert broken["key"] == "images__broken.png"
    assert set(os.listdir(root / "out" / "items" / broken["key"])) == {RECORD}


def test_maps_overlays_and_aucs_equal_the_library_run_here(finished_job):
    root, paths, _, _ = finished_job
    model = open_model(MODEL, OPTIONS)
    rows = {Path(row["path"]).name: row for row in read_csv(root / "out" / "results.csv")}
    for path in paths[:3]:
        image = model.preset.prepare(path)
        expected = explain_all(
            model.adapter, image.tensor, ["gradient", "gradcam"], class_names=model.class_names
        )
        folder = root / "out" / "items" / rows[path.name]["key"]
        assert set(os.listdir(folder)) == CLASS_FILES | method_files("gradient") | method_files(
            "gradcam"
        )
        for method, explanation in expected.items():
            saved = Explanation.load(folder / method)
            torch.testing.assert_close(
                saved.attributions, explanation.attributions, rtol=1e-5, atol=1e-6
            )
            assert torch.equal(saved.targets, explanation.targets)
            # drawn on the original image, its colorbar beside it
            width, height = Image.open(path).size
            figure = Image.open(folder / f"{method}.png")
            assert figure.size[0] == width + viz.COLORBAR_PIXELS and figure.size[1] > height
            curves = [
                play(model.adapter, image.tensor, explanation, pixels_per_step=64)
                for play in (deletion, insertion)
            ]
            row = rows[path.name]
            assert float(row[f"{method}_deletion_auc"]) == pytest.approx(float(curves[0].auc[0]))
            assert float(row[f"{method}_insertion_auc"]) == pytest.approx(float(curves[1].auc[0]))


def test_parquet_table_equals_the_csv(finished_job):
    pq = pytest.importorskip("pyarrow.parquet")
    root = finished_job[0]
    table = pq.read_table(root / "out" / "results.parquet").to_pylist()
    rows = read_csv(root / "out" / "results.csv")
    assert len(table) == len(rows) == 7
    for stored, row in zip(table, rows, strict=True):
        assert list(stored) == list(row)
        for column, value in stored.items():
            assert ("" if value is None else str(value)) == row[column], column


# -- resuming --------------------------------------------------------------------------------
def test_rerun_skips_finished_items_and_redoes_what_changed(tmp_path):
    paths = make_images(tmp_path / "images", 4)
    out = tmp_path / "out"
    spec = JobSpec(model=MODEL, load_options=OPTIONS, methods=("gradient", "gradcam"))
    first = run_job(spec, tmp_path / "images", out, workers=1, progress=False)
    assert (first.explained, first.skipped) == (4, 0)
    records = {path.name: out / "items" / path.name / RECORD for path in paths}
    stamps = {name: record.stat().st_mtime_ns for name, record in records.items()}

    again = run_job(spec, tmp_path / "images", out, workers=1, progress=False)
    assert (again.explained, again.skipped) == (0, 4)
    assert {name: record.stat().st_mtime_ns for name, record in records.items()} == stamps

    make_images(tmp_path / "images", 1, seed=7)  # a new picture under the first name
    changed_image = run_job(spec, tmp_path / "images", out, workers=1, progress=False)
    assert (changed_image.explained, changed_image.skipped) == (1, 3)
    assert records["im000.png"].stat().st_mtime_ns != stamps["im000.png"]
    assert all(records[p.name].stat().st_mtime_ns == stamps[p.name] for p in paths[1:])

    fewer = JobSpec(model=MODEL, load_options=OPTIONS, methods=("gradient",))
    changed_spec = run_job(fewer, tmp_path / "images", out, workers=1, progress=False)
    assert (changed_spec.explained, changed_spec.skipped) == (4, 0)
    for path in paths:  # the Grad-CAM files of the earlier settings are gone
        assert set(os.listdir(out / "items" / path.name)) == CLASS_FILES | method_files("gradient")
    assert len(read_csv(out / "results.csv")) == 4


def test_the_same_images_spelled_otherwise_are_the_same_job(tmp_path, monkeypatch):
    make_images(tmp_path / "photos" / "cats", 2)
    monkeypatch.chdir(tmp_path)
    spec = JobSpec(model=MODEL, load_options=OPTIONS)
    first = run_job(spec, "photos", "out", workers=1, progress=False)
    assert (first.explained, first.skipped) == (2, 0)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "items").glob(f"*/{RECORD}")}
    for spelling in (str(tmp_path / "photos"), "./photos/", "photos/*/*.png"):
        again = run_job(spec, spelling, tmp_path / "out", workers=1, progress=False)
        assert again.explained == 0, spelling  # keyed by the path under the input's root
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    monkeypatch.chdir(tmp_path / "photos")
    moved = run_job(spec, "cats", tmp_path / "out", workers=1, progress=False)
    assert moved.explained == 2  # another root: im000.png is not cats/im000.png


def test_a_class_index_out_of_range_is_refused_before_any_work(tmp_path):
    make_images(tmp_path / "images", 1)
    for target in (-1, "-1", 10, "top-11"):
        spec = JobSpec(model=MODEL, load_options=OPTIONS, target=target)
        with pytest.raises(ValueError, match=r"out of range: .* has 10 classes \(0\.\.9\)|top-11"):
            run_job(spec, tmp_path / "images", tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out" / "items").exists()


def test_a_second_job_into_the_same_folder_is_refused(tmp_path):
    make_images(tmp_path / "images", 1)
    spec = JobSpec(model=MODEL, load_options=OPTIONS)
    with (
        JobFolder(tmp_path / "out").lock(),
        pytest.raises(OSError, match="another batch job is writing into"),
    ):
        run_job(spec, tmp_path / "images", tmp_path / "out", workers=1, progress=False)


def test_command_line_exits_1_when_an_image_failed_and_2_on_bad_options(tmp_path, capsys):
    from salience.cli import main

    make_images(tmp_path / "images", 2)
    (tmp_path / "images" / "broken.png").write_text("not an image")
    common = ["batch", str(tmp_path / "images"), "--model", MODEL, "--size", "32", "--quiet"]
    status = main([*common, "--method", "gradcam", "--workers", "1", "-o", str(tmp_path / "out")])
    output = capsys.readouterr().out
    assert status == 1
    assert "3 images: 3 explained now" in output and "1 failed" in output
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [row["status"] for row in rows] == ["failed", "done", "done"]
    saved = Explanation.load(tmp_path / "out" / "items" / "im000.png" / "gradcam")
    assert saved.attributions.shape == (1, 1, 32, 32)  # --size 32 reached the workers

    assert main([*common, "--chunk-size", "4", "-o", str(tmp_path / "other")]) == 2
    assert "chunk size are options of the ray engine" in capsys.readouterr().err
