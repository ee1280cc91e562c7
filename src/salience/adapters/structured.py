"""The tensor to explain from a model that returns more than one: a tuple, a dict, a dataclass,
a Hugging Face style ``ModelOutput`` (an object with ``.logits``), or a detector's boxes.

:func:`select_output` is what every adapter applies to a model's raw output. It picks the output
named by a key (``output="logits"``, ``output=0``; ``--output-key``), or the only candidate when
that is unambiguous: a single tensor, the ``logits`` entry, or a detector's ``boxes``,
``labels`` and ``scores`` (packed by :func:`pack_detections` into one ``(N, D, 6)`` tensor,
which :func:`salience.targets.detection_target` scores). Anything else is refused in one line
that lists what the model returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from salience.errors import SalienceError

OutputKey = str | int | None
DETECTION_KEYS: tuple[str, ...] = ("boxes", "labels", "scores")
DETECTIONS = "detections"
"""The key that packs a detector's boxes, labels and scores into one ``(N, D, 6)`` tensor:
``x1, y1, x2, y2, label, score`` per detection (padding rows: label -1, score 0)."""


class OutputKeyError(SalienceError, LookupError):
    """The model's output is not one tensor and the key names none of its outputs."""


def select_output(output: object, key: OutputKey = None) -> Tensor:
    """The tensor of ``output`` named by ``key``, or the only candidate when ``key`` is None.

    Parameters
    ----------
    output : object
        What the model returned.
    key : str or int, optional
        A dict key, a field or attribute name (``"logits"``), a tuple index (``0``), or
        ``"detections"``.

    Raises
    ------
    OutputKeyError
        When ``key`` names nothing, or ``key`` is None and the choice is ambiguous; the message
        lists the outputs there are.
    """
    if isinstance(output, Tensor):
        if key in (None, 0):
            return output
        raise OutputKeyError(
            f"the model returns one tensor {_shape(output)}, which has no output {key!r}; "
            "leave the output key unset"
        )
    entries = _entries(output)
    if entries is None:
        raise OutputKeyError(
            f"the model returned a {type(output).__name__}, not a tensor or a tuple, dict or "
            "dataclass of them; wrap it in a module that returns the logits tensor (N, classes)"
        )
    if key == DETECTIONS or (key is None and _is_detector(entries)):
        return pack_detections(output)
    if isinstance(key, str) and key.isdigit() and key not in entries:
        key = int(key)  # an index typed on the command line
    if key is not None:
        if key in entries and isinstance(entries[key], Tensor):
            return entries[key]
        raise OutputKeyError(
            f"the model's output has no tensor {key!r}; it {_listing(output, entries)}: "
            "choose one with output=... (--output-key)"
        )
    tensors = [name for name, value in entries.items() if isinstance(value, Tensor)]
    if "logits" in tensors:
        return entries["logits"]
    if len(tensors) == 1:
        return entries[tensors[0]]
    raise OutputKeyError(
        f"the model {_listing(output, entries)}; say which to explain with output=KEY "
        "(--output-key KEY)"
    )


def pack_detections(output: object) -> Tensor:
    """A detector's boxes, labels and scores as one ``(N, D, 6)`` tensor.

    ``output`` is a dict (or dataclass) of ``boxes (N, D, 4)``, ``labels (N, D)`` and
    ``scores (N, D)``, or a list of one such dict per image with ``(D_i, ...)`` tensors
    (torchvision's detectors), padded to the largest ``D_i`` with label -1 and score 0. Boxes
    and scores keep their gradients.

    Raises
    ------
    OutputKeyError
        When the output lacks one of ``boxes``, ``labels``, ``scores``.
    """
    if isinstance(output, Sequence) and not isinstance(output, str | bytes):
        images = [_detection_parts(item) for item in output]
        if not images:
            raise OutputKeyError("the detector returned an empty list (no image)")
        size = max(boxes.shape[0] for boxes, _, _ in images)
        rows = [_padded(_pack(*parts), size) for parts in images]
        return torch.stack(rows)
    boxes, labels, scores = _detection_parts(output)
    return _pack(boxes, labels, scores)


def _pack(boxes: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
    return torch.cat([boxes, labels.to(scores.dtype).unsqueeze(-1), scores.unsqueeze(-1)], dim=-1)


def _padded(rows: Tensor, size: int) -> Tensor:
    if rows.shape[0] == size:
        return rows
    padding = rows.new_zeros(size - rows.shape[0], rows.shape[1])
    padding[:, 4] = -1
    return torch.cat([rows, padding])


def _detection_parts(output: object) -> tuple[Tensor, Tensor, Tensor]:
    entries = _entries(output)
    if entries is None or not _is_detector(entries):
        listing = _listing(output, entries) if entries is not None else "is no dict"
        raise OutputKeyError(
            f"a detector's output needs tensors {', '.join(DETECTION_KEYS)}; the model's output "
            f"{listing}"
        )
    boxes, labels, scores = (entries[name] for name in DETECTION_KEYS)
    return boxes, labels, scores


def _is_detector(entries: Mapping[object, object]) -> bool:
    return all(isinstance(entries.get(name), Tensor) for name in DETECTION_KEYS)


def _entries(output: object) -> dict[object, object] | None:
    """The named outputs of a structured output, or None when it is none."""
    if isinstance(output, Mapping):  # dicts and Hugging Face ModelOutput
        return {name: value for name, value in output.items() if value is not None}
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        fields = (field.name for field in dataclasses.fields(output))
        return {name: getattr(output, name) for name in fields}
    if isinstance(output, tuple | list):
        if output and all(isinstance(item, Mapping) for item in output):
            first = {name: value for name, value in output[0].items() if value is not None}
            return first if _is_detector(first) else None
        return dict(enumerate(output))
    if isinstance(getattr(output, "logits", None), Tensor):
        return {"logits": output.logits}
    return None


def _listing(output: object, entries: Mapping[object, object]) -> str:
    """``returns a tuple of 0 (2, 10), 1 (2, 4)``: what the output holds."""
    parts = [
        f"{name!r} {_shape(value)}" if isinstance(value, Tensor) else f"{name!r} (no tensor)"
        for name, value in entries.items()
    ]
    return f"returns a {type(output).__name__} of {', '.join(parts) or 'nothing'}"


def _shape(value: Tensor) -> str:
    return str(tuple(value.shape))
