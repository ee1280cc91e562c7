"""The work on one image, the same in every engine: explain it and encode its files in memory.

A worker (a process of the local pool, a Ray actor) builds one :class:`ItemWorker` from the
:class:`~salience.runner.spec.JobSpec`: the model is opened once, the explainers built once.
Each :class:`Task` carries the image's bytes, read by the job, so workers need no access to the
input files; each :class:`ItemResult` carries the item's files as bytes and its record, which the
job writes into the output folder. A bad image gives a failed result with its error, not an
exception.

When every method of the job explains a batch as its images one by one
(:attr:`~salience.methods.base.Explainer.batches_exactly`: the single-pass methods), a worker
given several images (:meth:`ItemWorker.process_all`) explains those of one input shape together,
up to :data:`GROUP_SIZE` per call: one forward and one backward pass for the group. A group
that fails is explained again image by image, so a bad image still fails alone.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from salience.api import explain_all, make_explainer, method_options
from salience.errors import first_line
from salience.evaluation.faithfulness import MODES, CausalMetric
from salience.images import PreparedImage
from salience.loading import open_model
from salience.methods import EXPLAINER
from salience.modalities import (
    IMAGE,
    check_data_fits,
    data_files,
    input_kind,
    input_picture,
    load_data_bytes,
)
from salience.models.loader import declared_input_shape
from salience.outputs import Summary, explained_text
from salience.registry import get
from salience.render import encode, render, thumbnail, title
from salience.runner.inputs import BatchItem
from salience.runner.spec import JobSpec
from salience.signals import Signal
from salience.targets import as_score_matrix, check_target, parse_target
from salience.volumes import Volume

DONE, FAILED = "done", "failed"
IMAGE_THUMBNAIL = "image.thumb.png"
"""The image's own thumbnail, in every finished item's folder."""
FIGURE_CLASSES = 5
"""Classes of the prediction a figure's title can quote with their probability, as in
``salience explain`` (another explained class is named without it)."""


GROUP_SIZE = 8
"""Images of one shape explained in one call by a worker, when the methods batch exactly: a
worker's whole work on an image (decoding, explaining, drawing, encoding) takes 0.85× its time
alone for the gradient and 0.94× for Grad-CAM on the embedded EfficientNet-Lite0, one thread
(``bench/batch.py --groups``); drawing and encoding, not the model, is most of what is left."""


def group_size(spec: JobSpec) -> int:
    """How many images a worker explains in one call for this job: :data:`GROUP_SIZE` when
    every method batches exactly, else 1."""
    exact = all(get(EXPLAINER, method).batches_exactly for method in spec.methods)
    return GROUP_SIZE if exact else 1


def method_thumbnail(method: str) -> str:
    """The file name of a method's overlay thumbnail (first target)."""
    return f"{method}.thumb.png"


@dataclass(frozen=True)
class Task:
    """One image to explain: the item and its file's bytes (or why they could not be read).

    ``kind`` is the input's kind (:func:`~salience.modalities.input_kind`), decided where the
    file is read: a ``.npy`` is a scan or a signal by the rank in its header, and a remote
    worker (a Ray actor on another machine) has the bytes but not the file. None: decided by
    the worker from the path.
    """

    item: BatchItem
    data: bytes | None
    error: str | None = None
    kind: str | None = None


def read_task(item: BatchItem) -> Task:
    """Read the item's file and decide its kind; an unreadable file makes a task that fails
    with the reason."""
    try:
        return Task(item, Path(item.path).read_bytes(), kind=input_kind(item.path))
    except OSError as error:
        return Task(item, None, f"cannot read {item.path}: {error.strerror or error}")


@dataclass
class ItemResult:
    """What the job writes for one item.

    Attributes
    ----------
    key : str
        The item's key (its output folder).
    record : dict
        ``status`` (``done`` or ``failed``), ``error``, the prediction, the explained classes,
        the AUCs, ``seconds`` and the ``files``.
    files : dict of str to bytes
        File name (inside the item's folder) → content.
    """

    key: str
    record: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


class ItemWorker:
    """Opens the job's model once and explains images one by one.

    Parameters
    ----------
    spec : JobSpec
        The job.
    """

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.loaded = open_model(spec.model, spec.load_options)
        adapter = self.loaded.adapter
        self.explainers = [
            make_explainer(adapter, method, **method_options(method, spec.options))
            for method in spec.methods
        ]
        names = self.loaded.class_names
        self.target = check_target(
            parse_target(spec.target, names), len(names), model=self.loaded.name
        )
        self.metrics = (
            [
                # every image plays the curves: the fused copy is built once and pays back
                CausalMetric(adapter, mode, pixels_per_step=spec.pixels_per_step, bulk=True)
                for mode in MODES
            ]
            if spec.auc
            else []
        )

    def process(self, task: Task) -> ItemResult:
        """Explain one image; any error of this image makes a failed result."""
        start = time.perf_counter()
        if task.data is None:
            return _failed(task.item, task.error or "no data", start)
        data, path, prepare = task.data, task.item.path, self.loaded.preset.prepare
        kind = _kind(task)
        if kind == IMAGE:
            label = Path(path).name
            return _settled(task.item, start, lambda: self._explain(prepare(data), label=label))
        return _settled(
            task.item, start, lambda: self._explain_data(load_data_bytes(data, path, kind))
        )

    def process_all(self, tasks: Sequence[Task]) -> list[ItemResult]:
        """Explain several images, in order; images of one shape together (up to
        :func:`group_size` per call) when the methods batch exactly, each image's result as
        :meth:`process` would give it (maps equal up to float summation order)."""
        size = group_size(self.spec)
        results: dict[int, ItemResult] = {}
        groups: dict[tuple[Any, ...], list[_Prepared]] = {}
        for i, task in enumerate(tasks):
            if size == 1 or task.data is None or _kind(task) != IMAGE:
                results[i] = self.process(task)
                continue
            start = time.perf_counter()
            try:
                image = self.loaded.preset.prepare(task.data)
            except Exception as error:  # an unreadable image fails alone
                results[i] = _failed(task.item, first_line(error), start)
                continue
            prepared = _Prepared(i, task, image, time.perf_counter() - start)
            groups.setdefault((tuple(image.tensor.shape), image.tensor.dtype), []).append(prepared)
        for members in groups.values():
            for first in range(0, len(members), size):
                results.update(self._explain_group(members[first : first + size]))
        return [results[i] for i in range(len(tasks))]

    def _explain_group(self, members: list[_Prepared]) -> dict[int, ItemResult]:
        """One call for the group's images; image by image when it fails (one bad image
        fails alone) or holds one image."""
        start = time.perf_counter()
        together = None
        if len(members) > 1:
            try:
                together = self._explanations(torch.cat([m.image.tensor for m in members]))
            except Exception:  # found again, and reported, image by image below
                together = None
        share = (time.perf_counter() - start) / len(members) if together is not None else 0.0
        results = {}
        for row, member in enumerate(members):
            own = None if together is None else {m: e.select(row) for m, e in together.items()}
            begun = time.perf_counter() - member.seconds - share
            results[member.index] = _settled(
                member.task.item,
                begun,
                lambda image=member.image, own=own, label=Path(member.task.item.path).name: (
                    self._explain(image, own, label=label)
                ),
            )
        return results

    def _explanations(self, tensor: Any) -> dict[str, Any]:
        return explain_all(
            self.loaded.adapter,
            tensor,
            self.explainers,
            target=self.target,
            score=self.spec.score,
            class_names=self.loaded.class_names,
            output_kind=self.loaded.output_kind,
        )

    def _explain_data(self, item: Volume | Signal) -> tuple[dict[str, Any], dict[str, bytes]]:
        """A scan or signal: per method its raw maps, picture (and NIfTI map) and thumbnail,
        captioned with the method and the prediction it explains."""
        loaded, display = self.loaded, self.spec.display
        check_data_fits(item, declared_input_shape(loaded.adapter), loaded.name)
        tensor = item.tensor()
        explanations = self._explanations(tensor)
        summary = self._summary(tensor, explanations, FIGURE_CLASSES)
        files = {IMAGE_THUMBNAIL: _png_thumbnail(input_picture(item), display.thumbnail)}
        captions: dict[str, str] = {}
        for method, explanation in explanations.items():
            explanation = explanation.with_names(loaded.class_names, model=loaded.name)
            explanation = explanation.with_geometry(item.geometry())
            written = data_files(
                explanation,
                item,
                method,
                reduce=display.reduce,
                alpha=display.alpha,
                cmap=display.cmap,
                compress=False,
            )
            first = f"{method}{explanation.figure_suffix(0)}.png"
            written[method_thumbnail(method)] = _png_thumbnail(written[first], display.thumbnail)
            files.update(written)
            explained = explained_text(summary, int(explanation.targets[0, 0]), loaded.class_names)
            captions[method] = f"{method}: {explained}"
        return {**self._record(tensor, explanations), "captions": captions}, files

    def _summary(self, tensor: Any, explanations: dict[str, Any], k: int) -> Summary:
        """The item's prediction, its ``k`` first classes, from the methods' own forward pass."""
        outputs = next(iter(explanations.values())).outputs
        if outputs is None:
            outputs = self.loaded.adapter.forward(tensor)
        return self.loaded.summary(as_score_matrix(outputs)[0], k=k)

    def _record(self, tensor: Any, explanations: dict[str, Any]) -> dict[str, Any]:
        """The item's prediction and the classes explained (the AUCs are added by the caller)."""
        prediction = self._summary(tensor, explanations, 1).best
        first = next(iter(explanations.values())).with_names(self.loaded.class_names)
        return {
            "status": DONE,
            "error": None,
            "predicted": prediction.index,
            "predicted_class": prediction.name,
            "probability": prediction.probability,
            "value": prediction.output if prediction.probability is None else None,
            "explained": first.targets[0].tolist(),
            "explained_classes": list(first.target_names[0]) if first.target_names else None,
            "auc": {},
        }

    def _explain(
        self,
        image: PreparedImage,
        explanations: dict[str, Any] | None = None,
        *,
        label: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """An image's record and files, from its explanations (None: made here): per method its
        raw maps, one figure per target (the overlay under the title ``salience explain`` gives
        it, with its colorbar) and the thumbnail of the first; ``label`` names the image in the
        titles."""
        spec, names = self.spec, self.loaded.class_names
        if explanations is None:
            explanations = self._explanations(image.tensor)
        summary = self._summary(image.tensor, explanations, FIGURE_CLASSES)
        display = spec.display
        view = display.view(image)
        files = {IMAGE_THUMBNAIL: encode(thumbnail(view.image, display.thumbnail))}
        auc: dict[str, dict[str, float]] = {}
        titles: dict[str, str] = {}
        captions: dict[str, str] = {}
        for method, explanation in explanations.items():
            explanation = explanation.with_names(names, model=self.loaded.name)
            files[f"{method}.npz"], files[f"{method}.json"] = explanation.to_bytes(compress=False)
            count = explanation.targets.shape[1]
            for k in range(count):
                rendering = render(explanation, k, view, display)
                explained = explained_text(summary, int(explanation.targets[0, k]), names)
                name = f"{method}{explanation.figure_suffix(k)}.png"
                titles[name] = title(explanation, k, label, prediction=explained)
                files[name] = rendering.figure_png(titles[name])
                if k == 0:
                    files[method_thumbnail(method)] = rendering.thumbnail_png
                    captions[method] = f"{method}: {explained}"
            if self.metrics:
                curves = [metric(image.tensor, explanation) for metric in self.metrics]
                auc[method] = {curve.mode: float(curve.auc[0]) for curve in curves}
        record = self._record(image.tensor, explanations)
        return {**record, "auc": auc, "titles": titles, "captions": captions}, files


@dataclass(frozen=True)
class _Prepared:
    """An image of :meth:`ItemWorker.process_all`, read and prepared in ``seconds``."""

    index: int
    task: Task
    image: PreparedImage
    seconds: float


def _kind(task: Task) -> str:
    """The task's input kind: as decided where its file was read, else from its path."""
    return task.kind or input_kind(task.item.path)


def _settled(
    item: BatchItem, start: float, work: Callable[[], tuple[dict[str, Any], dict[str, bytes]]]
) -> ItemResult:
    """The result of ``work`` (the item's record and files) begun at ``start``; any error of
    it makes a failed result: one bad image fails alone, the job goes on."""
    try:
        record, files = work()
    except Exception as error:
        return _failed(item, first_line(error), start)
    record["seconds"] = time.perf_counter() - start
    record["files"] = sorted(files)
    return ItemResult(item.key, record, files)


def _png_thumbnail(png: bytes, size: int) -> bytes:
    """A PNG's thumbnail, as PNG."""
    with Image.open(io.BytesIO(png)) as picture:
        return encode(thumbnail(np.asarray(picture.convert("RGB")), size))


def _failed(item: BatchItem, error: str, start: float) -> ItemResult:
    record = {"status": FAILED, "error": error, "seconds": time.perf_counter() - start}
    return ItemResult(item.key, {**record, "files": []})
