"""What is explained: which score of the model's output each saliency map is the gradient of.

A target is resolved against the model's outputs into a :class:`Selection`: for each sample, ``K``
output indices (``K = 1`` except for top-k), or a callable that computes the scores itself. The
score is the logit by default; ``score="probability"`` takes the softmax probability instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from salience.errors import SalienceError

ScoreKind = Literal["logit", "probability"]
SCORE_KINDS: tuple[str, ...] = ("logit", "probability")
EXPLAINED_SCORES: tuple[str, ...] = (*SCORE_KINDS, "sigmoid", "value")
"""What an explanation's ``score_kind`` may say: the logit, the softmax probability, σ(logit)
(a binary or multi-label output's probability), or a regression's value."""


class TargetError(SalienceError, ValueError):
    """A target that does not fit the model's output (bad index, unknown name, wrong shape)."""


@dataclass(frozen=True)
class Predicted:
    """The predicted class (argmax of the output); the output itself for one-output models."""


@dataclass(frozen=True)
class ClassIndex:
    """One output index for every sample, or one index per sample."""

    index: int | tuple[int, ...]


@dataclass(frozen=True)
class TopK:
    """The ``k`` highest-scoring classes of each sample: ``k`` maps from one forward pass."""

    k: int


@dataclass(frozen=True)
class Custom:
    """Any callable ``outputs (N, ...) -> scores (N,)``, e.g. a mask-summed segmentation score.

    Attributes
    ----------
    fn : callable
        ``fn(outputs)``; with ``per_sample``, ``fn(outputs, samples)``.
    name : str
        How the target is shown.
    per_sample : bool
        The score depends on which input a row of outputs belongs to (say, one mask per image).
        Methods evaluate batches of perturbed copies of the inputs, so ``fn`` then also receives
        ``samples``, the ``(B,)`` index of the input each row of ``outputs`` comes from.
    """

    fn: Callable[..., Tensor]
    name: str = "custom"
    per_sample: bool = False


def segmentation_target(class_index: int, mask: Tensor | Sequence) -> Custom:
    """A segmentation score: the sum of one class's logits over the pixels of a mask.

    Parameters
    ----------
    class_index : int
        The class channel of outputs shaped ``(N, classes, H, W)``.
    mask : Tensor or array-like
        ``(H, W)`` or ``(N, H, W)`` weights, usually boolean: which pixels' logits count.

    Returns
    -------
    Custom
        A target usable with every method, e.g. ``explain(model, x, method="gradcam",
        target=segmentation_target(12, mask))``.
    """
    weights = torch.as_tensor(mask)
    if weights.ndim not in (2, 3):
        raise TargetError(f"the mask must be (H, W) or (N, H, W), got shape {tuple(weights.shape)}")
    weights = weights.float()

    def score(outputs: Tensor, samples: Tensor) -> Tensor:
        if outputs.ndim != 4:
            raise TargetError(
                "a segmentation target needs outputs (N, classes, H, W); the model gives "
                f"{tuple(outputs.shape)}"
            )
        if not -outputs.shape[1] <= class_index < outputs.shape[1]:
            raise TargetError(
                f"class index {class_index} is out of range: the model has "
                f"{outputs.shape[1]} classes"
            )
        if tuple(weights.shape[-2:]) != tuple(outputs.shape[-2:]):
            raise TargetError(
                f"the mask is {tuple(weights.shape[-2:])} but the outputs are "
                f"{tuple(outputs.shape[-2:])} pixels"
            )
        if weights.ndim == 3:
            if int(samples.max()) >= weights.shape[0]:
                raise TargetError(
                    f"{weights.shape[0]} masks were given for a batch of more samples"
                )
            chosen = weights.to(outputs)[samples]
        else:
            chosen = weights.to(outputs)
        return (outputs[:, class_index] * chosen).sum(dim=(-2, -1))

    pixels = int((weights != 0).sum()) if weights.ndim == 2 else None
    name = (
        f"class {class_index} over a {pixels}-pixel mask"
        if pixels
        else f"class {class_index} over masks"
    )
    return Custom(score, name, per_sample=True)


def box_iou(boxes: Tensor, others: Tensor) -> Tensor:
    """``(A, B)`` intersection over union of boxes ``(A, 4)`` and ``(B, 4)``, as
    ``x1, y1, x2, y2`` corners (``torchvision.ops.box_iou``)."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    other_area = (others[:, 2] - others[:, 0]).clamp(min=0) * (others[:, 3] - others[:, 1]).clamp(
        min=0
    )
    top_left = torch.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], others[None, :, 2:])
    sides = (bottom_right - top_left).clamp(min=0)
    intersection = sides[..., 0] * sides[..., 1]
    union = area[:, None] + other_area[None, :] - intersection
    return intersection / union.clamp(min=torch.finfo(union.dtype).tiny)


def detection_target(
    boxes: Tensor | Sequence[Sequence[float]],
    labels: Sequence[int] | Tensor,
    *,
    iou_threshold: float = 0.5,
) -> Custom:
    """A detector's score for given objects (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``).

    For each reference box, the detection that overlaps it most counts when their IoU exceeds
    ``iou_threshold`` and its label is the box's: the score is the sum, over the reference
    boxes, of that detection's IoU plus its score. A CAM of this score shows what made the
    detector find these objects.

    Parameters
    ----------
    boxes : Tensor or array-like
        ``(R, 4)`` reference boxes, ``x1, y1, x2, y2`` in the detector's coordinates.
    labels : sequence of int
        The ``R`` labels the detections must have.
    iou_threshold : float
        The overlap a detection needs.

    Returns
    -------
    Custom
        A target for outputs ``(N, D, 6)``: a detector's boxes, labels and scores as the
        adapter packs them (:func:`salience.adapters.structured.pack_detections`; a model that
        returns a dict of ``boxes``, ``labels``, ``scores`` is packed so by default).
    """
    references = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    wanted = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if references.shape[0] != wanted.shape[0]:
        raise TargetError(
            f"{references.shape[0]} reference boxes but {wanted.shape[0]} labels; give one "
            "label per box"
        )
    if not 0.0 <= iou_threshold < 1.0:
        raise TargetError(f"iou_threshold must be in [0, 1), got {iou_threshold}")

    def score(outputs: Tensor) -> Tensor:
        if outputs.ndim != 3 or outputs.shape[-1] != 6:
            raise TargetError(
                "a detection target needs a detector's boxes, labels and scores (a model that "
                f"returns a dict of boxes, labels, scores); the model gives {tuple(outputs.shape)}"
            )
        rows = []
        for detections in outputs:
            total = detections.new_zeros(())
            if detections.shape[0]:
                ious = box_iou(references.to(detections), detections[:, :4])
                best, index = ious.max(dim=1)
                for r in range(references.shape[0]):
                    i = int(index[r])
                    label = round(detections[i, 4].item())
                    if best[r].item() > iou_threshold and label == int(wanted[r]):
                        total = total + best[r] + detections[i, 5]
            rows.append(total)
        return torch.stack(rows)

    return Custom(score, f"{references.shape[0]} boxes (IoU > {iou_threshold:g})")


TargetSpec = Predicted | ClassIndex | TopK | Custom
TargetLike = TargetSpec | int | str | Sequence[int] | Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class Selection:
    """A target resolved for a concrete batch.

    Attributes
    ----------
    indices : Tensor or None
        ``(N, K)`` long tensor of output indices, or None when ``custom`` computes the scores.
    custom : Custom or None
        The user's score.
    samples : Tensor or None
        For a custom score: the ``(N,)`` index of the input that each row comes from.
    """

    indices: Tensor | None
    custom: Custom | None = None
    samples: Tensor | None = None

    @property
    def k(self) -> int:
        """Number of maps per sample."""
        return 1 if self.indices is None else int(self.indices.shape[1])

    def repeat(self, times: int) -> Selection:
        """The same selection for a batch in which every sample is repeated ``times`` in a row."""
        if self.indices is None:
            samples = None if self.samples is None else self.samples.repeat_interleave(times)
            return Selection(None, self.custom, samples)
        return Selection(self.indices.repeat_interleave(times, dim=0), self.custom)

    def take(self, rows: Tensor | slice) -> Selection:
        """The selection of a subset of the batch's samples."""
        if self.indices is None:
            samples = None if self.samples is None else self.samples[rows]
            return Selection(None, self.custom, samples)
        return Selection(self.indices[rows], self.custom)

    def labels(self) -> Tensor:
        """``(N, K)`` indices, ``-1`` where a custom score has no index."""
        if self.indices is None:
            raise TargetError("a custom target has no class index")
        return self.indices


def parse_target(target: TargetLike, class_names: Sequence[str] | None = None) -> TargetSpec:
    """Turn what a user passes (None, int, list, ``"top-3"``, a class name, a callable) into a spec.

    A class name is matched whole, ignoring case, or by a part found in one name only
    (``"persian"``: ``Persian cat``).

    Raises
    ------
    TargetError
        For an unknown class name or a part of several (the names that contain the word, else
        close matches, are suggested), or a malformed string.
    """
    if target is None:
        return Predicted()
    if isinstance(target, Predicted | ClassIndex | TopK | Custom):
        return target
    if isinstance(target, bool):
        raise TargetError(f"target {target!r} is not a class index")
    if isinstance(target, int):
        return ClassIndex(int(target))
    if isinstance(target, Tensor):
        return ClassIndex(tuple(int(i) for i in target.reshape(-1).tolist()))
    if isinstance(target, str):
        return _parse_target_string(target, class_names)
    if callable(target):
        return Custom(target, getattr(target, "__name__", "custom"))
    if isinstance(target, Sequence) and all(isinstance(i, int) for i in target):
        return ClassIndex(tuple(int(i) for i in target))
    raise TargetError(
        f"cannot use {target!r} as a target: pass a class index, a class name, 'predicted', "
        "'top-K' or a callable outputs -> (N,) scores"
    )


def _target_syntax(text: str) -> TargetSpec | None:
    """The target a string writes, or None when it is a class name (the model must say which)."""
    key = text.strip()
    lowered = key.lower()
    if lowered in ("", "predicted", "pred", "argmax"):
        return Predicted()
    if lowered.startswith("top-") or lowered.startswith("top"):
        digits = lowered.removeprefix("top").lstrip("-_")
        if digits.isdigit() and int(digits) >= 1:
            return TopK(int(digits))
        raise TargetError(f"target {text!r}: write top-K with K >= 1, e.g. 'top-3'")
    if key.lstrip("-").isdigit():
        return ClassIndex(int(key))
    return None


def _parse_target_string(text: str, class_names: Sequence[str] | None) -> TargetSpec:
    spec = _target_syntax(text)
    if spec is not None:
        return spec
    key = text.strip()
    lowered = key.lower()
    if class_names is None:
        raise TargetError(
            f"target {text!r} is a class name, but the model has no class names; pass an index"
        )
    names = [name.lower() for name in class_names]
    if lowered in names:
        return ClassIndex(names.index(lowered))
    containing = [i for i, name in enumerate(names) if lowered in name]
    if len(containing) == 1:  # a unique part of a name ("persian": Persian cat)
        return ClassIndex(containing[0])
    # names that have the word ("cat": Egyptian cat, tiger cat, ...) first, then look-alikes
    words = [i for i, name in enumerate(names) if lowered in name.replace(",", " ").split()]
    close = [names.index(n) for n in difflib.get_close_matches(lowered, names, n=3, cutoff=0.6)]
    chosen = list(dict.fromkeys(words[:6] + ([] if words else close + containing[:3])))
    suggestions = [class_names[i] for i in chosen]
    hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    if containing:
        raise TargetError(f"class name {text!r} is part of {len(containing)} class names{hint}")
    raise TargetError(f"unknown class name {text!r}{hint}")


def check_target_text(text: str) -> str:
    """Refuse, before any model is open, a target string that fits no model.

    Class names are looked up once the model is known (:func:`parse_target`,
    :func:`check_target`); this refuses what no model can take: a malformed top-K and a negative
    class index.

    Returns
    -------
    str
        ``text``, unchanged.

    Raises
    ------
    TargetError
        Naming the problem and what to write instead.
    """
    spec = _target_syntax(text)
    if spec is not None:
        check_target(spec)
    return text


def check_target(
    spec: TargetSpec, classes: int | None = None, *, model: str = "the model"
) -> TargetSpec:
    """Refuse a class index outside ``0..classes-1`` and a top-K of more than ``classes``.

    Typed targets (the command line, the server's form) count classes from 0: a negative index
    is refused rather than counted from the end as Python would.

    Parameters
    ----------
    spec : TargetSpec
        A parsed target.
    classes : int, optional
        The model's number of classes; None checks only what fits no model.
    model : str
        The model's name, for the message.

    Returns
    -------
    TargetSpec
        ``spec``, unchanged.

    Raises
    ------
    TargetError
        For an index or top-K the model cannot have, with the valid range.
    """
    bound = f"{model} has {classes} classes (0..{classes - 1})" if classes else ""
    if isinstance(spec, ClassIndex):
        indices = (spec.index,) if isinstance(spec.index, int) else spec.index
        for index in indices:
            if index < 0:
                where = bound or "class indices count from 0"
                raise TargetError(f"class index {index} is out of range: {where}")
            if classes is not None and index >= classes:
                raise TargetError(f"class index {index} is out of range: {bound}")
    if isinstance(spec, TopK) and classes is not None and spec.k > classes:
        raise TargetError(f"top-{spec.k} is more than the {classes} classes of {model}")
    return spec


def as_score_matrix(outputs: Tensor) -> Tensor:
    """View a model's output as ``(N, outputs)``: ``(N,)`` becomes ``(N, 1)``.

    Raises
    ------
    TargetError
        If the output is not ``(N,)`` or ``(N, classes)``.
    """
    if outputs.ndim == 1:
        return outputs.unsqueeze(1)
    if outputs.ndim == 2:
        return outputs
    raise TargetError(
        f"the model's output has shape {tuple(outputs.shape)}, not (N, classes): "
        "pass a callable target that turns it into (N,) scores"
    )


def resolve(spec: TargetSpec, outputs: Tensor) -> Selection:
    """Resolve a target spec against (detached) model outputs of one batch."""
    if isinstance(spec, Custom):
        return Selection(None, spec, torch.arange(outputs.shape[0], device=outputs.device))
    matrix = as_score_matrix(outputs.detach())
    n, classes = matrix.shape
    if isinstance(spec, Predicted):
        return Selection(matrix.argmax(dim=1, keepdim=True))
    if isinstance(spec, TopK):
        if spec.k > classes:
            raise TargetError(f"top-{spec.k} asked of a model with only {classes} outputs")
        return Selection(matrix.topk(spec.k, dim=1).indices)
    indices = (spec.index,) if isinstance(spec.index, int) else tuple(spec.index)
    if len(indices) not in (1, n):
        raise TargetError(f"{len(indices)} class indices given for a batch of {n} samples")
    bad = [i for i in indices if not -classes <= i < classes]
    if bad:
        raise TargetError(
            f"class index {bad[0]} is out of range: the model has {classes} outputs "
            f"(0..{classes - 1})"
        )
    column = torch.tensor([i % classes for i in indices], device=matrix.device).reshape(-1, 1)
    return Selection(column.expand(n, 1).clone() if len(indices) == 1 else column)


def target_scores(outputs: Tensor, selection: Selection, kind: str = "logit") -> Tensor:
    """The ``(N, K)`` scores to explain at the selected indices: logits (``"logit"``, or a
    regression's ``"value"``), softmax probabilities (``"probability"``) or σ(logit)
    (``"sigmoid"``, the probability of binary and multi-label outputs).

    Differentiable with respect to ``outputs``.
    """
    if selection.custom is not None:
        custom = selection.custom
        if custom.per_sample:
            samples = selection.samples
            if samples is None or samples.shape[0] != outputs.shape[0]:
                raise TargetError("a per-sample target was given outputs of unknown samples")
            scores = custom.fn(outputs, samples.to(outputs.device))
        else:
            scores = custom.fn(outputs)
        if (
            not isinstance(scores, Tensor)
            or scores.ndim != 1
            or scores.shape[0] != outputs.shape[0]
        ):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise TargetError(
                f"a custom target must return one score per row of outputs, shape "
                f"({outputs.shape[0]},); got {shape}. Methods score batches of perturbed copies: "
                "a score that depends on the sample must be Custom(fn, per_sample=True), "
                "fn(outputs, samples)"
            )
        return scores.unsqueeze(1)
    matrix = as_score_matrix(outputs)
    if kind == "probability":
        if matrix.shape[1] < 2:
            raise TargetError(
                "score='probability' is a softmax and needs two or more outputs; this model has "
                "one: give output_kind='sigmoid' (--output-kind sigmoid) to explain σ(logit), "
                "or explain the logit"
            )
        matrix = torch.softmax(matrix, dim=1)
    elif kind == "sigmoid":
        matrix = torch.sigmoid(matrix)
    elif kind not in ("logit", "value"):
        raise TargetError(f"unknown score kind {kind!r}; choose one of {', '.join(SCORE_KINDS)}")
    assert selection.indices is not None
    return matrix.gather(1, selection.indices.to(matrix.device))
