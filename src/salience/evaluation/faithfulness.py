"""Faithfulness of saliency maps: RISE's deletion and insertion curves and their areas.

A faithful map ranks pixels by how much they matter to the model. **Deletion** moves the pixels,
most salient first, to a zero substrate in the model's input space (the normalized image): the
explained score should fall fast, so a small area under the curve is better (↓). **Insertion**
starts from a blurred copy of the image and puts the original pixels back, most salient first:
the score should rise fast, so a large area is better (↑). This follows Petsiuk et al. 2018
(RISE) and the procedure of its reference implementation (``evaluation.py``): the score is the
softmax probability of the explained class (``score="logit"`` takes the logit), ``pixels_per_step``
pixels change per step (default: the image width, 224 for 224×224 images, as there), all channels
of a pixel at once, and the area is the trapezoid rule over the fraction of changed pixels in
[0, 1].

Volumes ``(N, C, D, H, W)`` and signals ``(N, C, L)`` are played the same way, voxel by voxel
and time step by time step: a step changes one slice's worth of voxels (``H·W``) of a volume,
a hundredth of a signal; insertion starts from a Gaussian blur (σ 5) along their spatial axes.

The step images are never held all at once: for each input, the perturbation engine
(:func:`salience.methods.masking.masked_scores`) builds them chunk by chunk from each pixel's
rank and scores them through the adapter (inference mode; any black box, ONNX included).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from salience.adapters.inference_copy import one_state_per_call
from salience.api import make_explainer, method_options
from salience.errors import InvalidInputError, UnsupportedError
from salience.evaluation.report import Column, format_rows, write_report
from salience.explanation import Explanation
from salience.methods.base import Explainer, score_to_explain
from salience.methods.masking import masked_scores
from salience.methods.perturbation import PERTURBATION_CHUNK_SIZE
from salience.methods.sampling import make_generator, map_in_chunks
from salience.opening import adapter_for
from salience.postprocess import REDUCTIONS, gaussian_blur, reduce_channels, upsample
from salience.registry import UnknownNameError
from salience.targets import (
    SCORE_KINDS,
    Custom,
    TargetError,
    TargetLike,
    TargetSpec,
    parse_target,
    resolve,
    target_scores,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DELETION = "deletion"
INSERTION = "insertion"
MODES: tuple[str, ...] = (DELETION, INSERTION)
MORF = "morf"
"""Most relevant first: the order of RISE's deletion and insertion."""
LERF = "lerf"
"""Least relevant first: deleting the least salient pixels first should keep the score up."""
ORDERS: tuple[str, ...] = (MORF, LERF)
SUBSTRATES: tuple[str, ...] = ("zeros", "blur", "mean", "road")
"""What changed pixels become: zeros, RISE's blur, each channel's mean, ROAD's imputation."""
ROAD_STEPS = 10
"""ROAD's curve: 0, 10, ..., 90% of the pixels removed (all of them leave nothing to impute)."""
BLUR_KERNEL_SIZE = 11
"""RISE's insertion substrate: an 11×11 Gaussian kernel of σ 5 pixels."""
BLUR_SIGMA = 5.0
RANDOM_METHOD = "random"
"""The name of the random-map baseline in reports."""

SubstrateLike = str | float | Tensor | None


@dataclass(frozen=True)
class Game:
    """One faithfulness curve: which pixels change first, into what, and which way is better.

    Attributes
    ----------
    name : str
        Its column in reports (``deletion``, ``road_morf``, ...).
    mode : {"deletion", "insertion"}
        Remove pixels from the image, or put them back onto the substrate.
    order : {"morf", "lerf"}
        Most or least relevant pixels first.
    substrate : str or None
        :class:`CausalMetric`'s substrate (None: the mode's default).
    lower_is_better : bool
        Whether a smaller area means a more faithful map.
    """

    name: str
    mode: str
    order: str
    substrate: str | None
    lower_is_better: bool

    @property
    def arrow(self) -> str:
        """↓ or ↑: which way is better."""
        return "↓" if self.lower_is_better else "↑"


GAMES: dict[str, Game] = {
    game.name: game
    for game in (
        Game(DELETION, DELETION, MORF, None, True),
        Game(INSERTION, INSERTION, MORF, None, False),
        Game("deletion_lerf", DELETION, LERF, None, False),
        Game("deletion_blur", DELETION, MORF, "blur", True),
        Game("deletion_mean", DELETION, MORF, "mean", True),
        Game("road_morf", DELETION, MORF, "road", True),
        Game("road_lerf", DELETION, LERF, "road", False),
    )
}
"""Every curve :func:`evaluate_methods` plays, by name. Deletion to zeros rewards scattered
maps (noise-like holes hurt any image); a blurred or mean substrate and ROAD's imputation
remove that advantage, and LeRF (least relevant first) checks the other end of the ranking."""
DEFAULT_GAMES: tuple[str, ...] = (DELETION, INSERTION, "road_morf", "road_lerf")


def rise_blur_kernel(size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> Tensor:
    """RISE's blur kernel, ``(size, size)`` float64, built as its ``gkern`` builds it.

    A unit impulse in the middle of a ``size``×``size`` array smoothed by SciPy's
    ``gaussian_filter(impulse, sigma)`` (mode ``reflect``, truncate 4): the Gaussian's tails that
    fall outside the array are reflected back in, so the kernel sums to 1 but is much flatter than
    a truncated, renormalized Gaussian: at σ 5 the corner weight is 0.88 of the centre's, against
    0.37 for the plain Gaussian (nearly an 11×11 box filter).
    """
    if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
        raise InvalidInputError(f"the blur kernel size must be an odd positive int, got {size!r}")
    if not sigma > 0:
        raise InvalidInputError(f"the blur sigma must be > 0 pixels, got {sigma!r}")
    impulse = torch.zeros(size, size, dtype=torch.float64)
    impulse[size // 2, size // 2] = 1.0
    return gaussian_blur(impulse, sigma)


def rise_blur(x: Tensor, *, size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> Tensor:
    """Insertion's start image: each channel convolved with :func:`rise_blur_kernel`.

    As RISE's ``conv2d(x, kern, padding=klen // 2)``: zero padding of ``size // 2`` pixels in
    the model's input space, so the borders fade towards zero (the mean colour of a normalized
    image), and no mixing of channels (RISE's 3×3 kernel stack is diagonal).
    """
    _check_images(x)
    kernel = rise_blur_kernel(size, sigma).to(device=x.device, dtype=x.dtype)
    channels = x.shape[1]
    weights = kernel.expand(channels, 1, size, size)
    return F.conv2d(x, weights, padding=size // 2, groups=channels)


def area_under_curve(scores: Tensor, fractions: Tensor) -> Tensor:
    """The trapezoid area under ``scores (..., P)`` over ``fractions (P,)`` from 0 to 1.

    With equal steps this is RISE's normalized AUC, ``(Σ s − s₀/2 − s_last/2) / (P − 1)``; a
    shorter last step (the pixel count is not a multiple of the step) gets its true width.
    """
    return torch.trapezoid(scores.double(), fractions.double().to(scores.device), dim=-1)


def random_saliency(x: Tensor, *, seed: int | None = 0) -> Tensor:
    """The random-map baseline: uniform noise ``(N, *S)`` from a seeded ``torch.Generator``.

    Equal seeds give equal maps; the global random state is untouched.
    """
    _check_images(x)
    generator = make_generator(seed, torch.device("cpu"))
    return torch.rand((x.shape[0], *x.shape[2:]), generator=generator, dtype=torch.float64)


def default_step(spatial: tuple[int, ...]) -> int:
    """Pixels per step by default: an image's width (RISE), a volume's slice ``H·W``, a
    hundredth of a signal (at least 1)."""
    if len(spatial) == 1:
        return max(1, spatial[0] // 100)
    return math.prod(spatial[1:]) if len(spatial) == 3 else spatial[-1]


def saliency_ranks(maps: Tensor) -> Tensor:
    """Each pixel's place in decreasing order of saliency (0 = the most salient).

    Parameters
    ----------
    maps : Tensor
        ``(N, H, W)`` maps.

    Returns
    -------
    Tensor
        ``(N, H, W)`` long ranks; equal values keep raster order, so the order is deterministic.
    """
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    places = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, places).reshape(maps.shape)


@dataclass(frozen=True)
class CurveResult:
    """Deletion or insertion curves of a batch of inputs.

    Attributes
    ----------
    mode : {"deletion", "insertion"}
        Which game was played.
    fractions : Tensor
        ``(P,)`` float64 fraction of pixels changed at each point, from 0 to 1.
    scores : Tensor
        ``(N, P)`` float64 score of the explained class at each point.
    targets : Tensor
        ``(N,)`` the explained output index of each input (``-1`` for a custom score).
    score_kind : str
        ``"probability"`` or ``"logit"``.
    pixels_per_step : int
        Pixels changed per step.
    """

    mode: str
    fractions: Tensor
    scores: Tensor
    targets: Tensor
    score_kind: str
    pixels_per_step: int
    order: str = MORF
    substrate: str = ""

    @property
    def auc(self) -> Tensor:
        """``(N,)`` area under each curve (deletion: lower is better; insertion: higher)."""
        return area_under_curve(self.scores, self.fractions)

    @property
    def mean_auc(self) -> float:
        """The mean area over the inputs."""
        return float(self.auc.mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: the curves, their areas and what they measure."""
        return {
            "mode": self.mode,
            "score": self.score_kind,
            "pixels_per_step": self.pixels_per_step,
            "order": self.order,
            "substrate": self.substrate,
            "targets": self.targets.tolist(),
            "fractions": self.fractions.tolist(),
            "scores": self.scores.tolist(),
            "auc": self.auc.tolist(),
            "mean_auc": self.mean_auc,
        }


class CausalMetric:
    """Deletion or insertion curves of saliency maps, as RISE defines them (see the module).

    Holds configuration only; each call returns a new :class:`CurveResult`.

    Parameters
    ----------
    model : torch.nn.Module, adapter or path of an .onnx file
        The model whose score is measured; it needs only forward passes.
    mode : {"deletion", "insertion"}
        Delete salient pixels first, or insert them first.
    pixels_per_step : int, optional
        Pixels changed per step; default: the image width (RISE), ``H·W`` voxels of a
        volume, a hundredth of a signal's length.
    score : {"probability", "logit"}
        The softmax probability of the explained class (RISE), or its logit.
    substrate : {"zeros", "blur", "mean", "road"}, float or Tensor, optional
        What changed pixels become (deletion) or start as (insertion); default: zeros for
        deletion, :func:`rise_blur` for insertion. ``"mean"``: each channel's mean over the
        image; ``"road"``: ROAD's noisy linear imputation from the pixels kept
        (:mod:`salience.evaluation.road`), whose curve has 10 steps by default and stops before
        every pixel is removed. A tensor is broadcast to the batch.
    order : {"morf", "lerf"}
        Most relevant pixels first (RISE), or least relevant first (LeRF: a deletion's score
        should then stay up, so a large area is better).
    reduce : str
        Channel reduction of maps with channels (:func:`salience.postprocess.reduce_channels`).
    chunk_size : int
        Step images per forward pass; does not change the curves.
    progress : bool
        Show a progress bar.
    seed : int or None
        Seed of ROAD's noise.
    road_noise : float
        σ of ROAD's noise on the imputed values, in the model's input units.
    bulk : bool, optional
        Whether many calls follow (a batch job: the adapter may then run its fused forward-only
        copy, built once and reused for every image); None: when one call scores at least
        :data:`~salience.methods.masking.BULK_PASSES` step images.
    """

    def __init__(
        self,
        model: object,
        mode: str = DELETION,
        *,
        pixels_per_step: int | None = None,
        score: str = "probability",
        substrate: SubstrateLike = None,
        reduce: str = "abs_max",
        chunk_size: int = PERTURBATION_CHUNK_SIZE,
        progress: bool = False,
        order: str = MORF,
        seed: int | None = 0,
        road_noise: float = 0.01,
        bulk: bool | None = None,
    ) -> None:
        if order not in ORDERS:
            raise InvalidInputError(f"unknown order {order!r}; choose {' or '.join(ORDERS)}")
        if mode not in MODES:
            raise InvalidInputError(f"unknown mode {mode!r}; choose {' or '.join(MODES)}")
        if pixels_per_step is not None and not (
            isinstance(pixels_per_step, int) and pixels_per_step >= 1
        ):
            raise InvalidInputError(f"pixels_per_step must be an int >= 1, got {pixels_per_step!r}")
        if score not in SCORE_KINDS:
            raise InvalidInputError(
                f"unknown score {score!r}; choose one of {', '.join(SCORE_KINDS)}"
            )
        if reduce not in REDUCTIONS:
            raise InvalidInputError(
                f"unknown reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}"
            )
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise InvalidInputError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        if isinstance(substrate, str) and substrate not in SUBSTRATES:
            raise InvalidInputError(
                f"unknown substrate {substrate!r}; choose {', '.join(SUBSTRATES)}, a number or "
                "a tensor"
            )
        self.adapter = adapter_for(model)
        self.mode = mode
        self.pixels_per_step = pixels_per_step
        self.score = score
        self.substrate = substrate
        self.reduce = reduce
        self.chunk_size = chunk_size
        self.progress = progress
        self.order = order
        self.seed = seed
        if not (isinstance(road_noise, int | float) and road_noise >= 0):
            raise InvalidInputError(f"road_noise must be a number >= 0, got {road_noise!r}")
        self.road_noise = float(road_noise)
        self.bulk = bulk

    @property
    def substrate_name(self) -> str:
        """The substrate in words: zeros, blur, mean, road, a number or ``tensor``."""
        choice = self.substrate
        if choice is None:
            return "zeros" if self.mode == DELETION else "blur"
        return "tensor" if isinstance(choice, Tensor) else str(choice)

    def __call__(
        self,
        x: Tensor,
        saliency: Tensor | Explanation,
        target: TargetLike = None,
        *,
        class_names: Sequence[str] | None = None,
    ) -> CurveResult:
        """The curves of the images ``x`` under their maps ``saliency``.

        Parameters
        ----------
        x : Tensor
            Images ``(N, C, H, W)`` in the model's input space.
        saliency : Tensor or Explanation
            Maps ``(N, h, w)`` or ``(N, C or 1, h, w)``, at the input's resolution or coarser
            (a CAM's layer grid: upsampled bilinearly first); or an explanation of ``x`` with
            one map per input, whose explained classes are then the default target.
        target : int, str, sequence of int, callable or None
            The class whose score is followed; None: the explanation's classes, else the
            predicted class of each input (RISE).
        class_names : sequence of str, optional
            Accept class names as targets.

        The model's state is read once for the whole run (the curves are of the model as it was
        when the call began), not again for every chunk of step images.
        """
        with one_state_per_call():
            return self._curves(x, saliency, target, class_names)

    def _curves(
        self,
        x: Tensor,
        saliency: Tensor | Explanation,
        target: TargetLike,
        class_names: Sequence[str] | None,
    ) -> CurveResult:
        x = self.adapter.prepare_input(x)
        _check_images(x)
        score = score_to_explain(self.adapter, x, self.score)  # σ of a cut final sigmoid
        if isinstance(saliency, Explanation):
            target = _explained_classes(saliency) if target is None else target
            saliency = _single_map(saliency)
        maps = _pixel_maps(saliency, x, self.reduce)
        spec = parse_target(target, class_names)
        selection = resolve(spec, self.adapter.forward(x, chunk_size=self.chunk_size))
        if selection.k != 1:
            raise TargetError(
                f"faithfulness follows one class per input; got {selection.k} (top-k): "
                "evaluate each class separately"
            )
        n, _, *spatial = x.shape
        pixels = math.prod(spatial)
        road = self.substrate_name == "road"
        if road and len(spatial) != 2:
            raise UnsupportedError(
                f"ROAD imputes the pixels of images (N, C, H, W); got inputs of shape "
                f"{tuple(x.shape)}: use the zeros, blur or mean substrate"
            )
        if road and self.pixels_per_step is None:
            changed = torch.round(torch.arange(ROAD_STEPS) * (pixels / ROAD_STEPS)).long()
            step = int(changed[1]) if ROAD_STEPS > 1 else pixels
        else:
            step = self.pixels_per_step or default_step(tuple(spatial))
            steps = math.ceil(pixels / step)
            changed = (torch.arange(steps + 1) * step).clamp(max=pixels)
            if road:  # nothing is left to impute from once every pixel is removed
                changed = changed[changed < pixels]
        ranks = saliency_ranks(maps if self.order == MORF else -maps).to(x.device)
        substrate = None if road else self._substrate(x)
        curves = torch.empty((n, len(changed)), dtype=torch.float64)
        for sample in range(n):
            own = selection.take(slice(sample, sample + 1))
            masks = self._masks(ranks[sample], changed)
            description = f"{self.mode} {sample + 1}/{n}"
            if road:
                scores = self._road_scores(x[sample : sample + 1], masks, len(changed), own, score)
            else:
                scores = masked_scores(
                    self.adapter,
                    x[sample : sample + 1],
                    masks,
                    len(changed),
                    own,
                    score,
                    substrate=None if substrate is None else substrate[sample : sample + 1],
                    chunk_size=self.chunk_size,
                    progress=self.progress,
                    description=description,
                    bulk=self.bulk,
                    run_passes=n * len(changed),
                )
            curves[sample] = scores[:, 0].double().cpu()
        targets = (
            selection.indices[:, 0].cpu()
            if selection.indices is not None
            else torch.full((n,), -1, dtype=torch.long)
        )
        return CurveResult(
            self.mode,
            changed.double() / pixels,
            curves,
            targets,
            score,
            step,
            self.order,
            self.substrate_name,
        )

    def _road_scores(self, x: Tensor, masks: Any, count: int, selection: Any, score: str) -> Tensor:
        """Scores ``(count, 1)`` of one image whose removed pixels are imputed (ROAD)."""
        import numpy as np

        from salience.evaluation.road import linear_imputation

        generator = np.random.default_rng(self.seed)
        image = x[0].detach().double().cpu().numpy()

        def scores(rows: slice) -> Tensor:
            kept = masks(rows)[:, 0].cpu().numpy()
            imputed = [
                linear_imputation(image, ~keep, noise=self.road_noise, generator=generator)
                for keep in kept.astype(bool)
            ]
            batch = torch.as_tensor(np.stack(imputed)).to(device=x.device, dtype=x.dtype)
            outputs = self.adapter.forward(batch, bulk=bool(self.bulk))
            return target_scores(outputs, selection.repeat(batch.shape[0]), score)

        parts = map_in_chunks(
            count, scores, self.chunk_size, progress=self.progress, description="road"
        )
        return torch.cat([values for _, values in parts])

    def _masks(self, ranks: Tensor, changed: Tensor) -> Any:
        """Rows of steps → masks ``(B, 1, H, W)`` that are 1 where the input is kept."""
        inserting = self.mode == INSERTION

        def masks(rows: slice) -> Tensor:
            counts = changed[rows].to(ranks.device).reshape(-1, 1, *([1] * ranks.ndim))
            return ranks < counts if inserting else ranks >= counts

        return masks

    def _substrate(self, x: Tensor) -> Tensor | None:
        """The substrate batch; None for zeros (the engine's exact ``x · m``)."""
        choice = self.substrate
        if choice is None:
            choice = "zeros" if self.mode == DELETION else "blur"
        if choice == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        if isinstance(choice, str):
            if choice == "zeros":
                return None
            return rise_blur(x) if x.ndim == 4 else gaussian_blur(x, BLUR_SIGMA, dims=x.ndim - 2)
        if isinstance(choice, Tensor):
            return choice.to(device=x.device, dtype=x.dtype).expand_as(x)
        return torch.full_like(x, float(choice))


def deletion(
    model: object, x: Tensor, saliency: Tensor | Explanation, **options: Any
) -> CurveResult:
    """Deletion curves: ``CausalMetric(model, "deletion", **options)(x, saliency, target)``.

    ``options`` are :class:`CausalMetric`'s, plus ``target`` and ``class_names`` of the call.
    """
    return _play(model, DELETION, x, saliency, options)


def insertion(
    model: object, x: Tensor, saliency: Tensor | Explanation, **options: Any
) -> CurveResult:
    """Insertion curves: ``CausalMetric(model, "insertion", **options)(x, saliency, target)``.

    ``options`` are :class:`CausalMetric`'s, plus ``target`` and ``class_names`` of the call.
    """
    return _play(model, INSERTION, x, saliency, options)


def _play(
    model: object, mode: str, x: Tensor, saliency: Tensor | Explanation, options: dict[str, Any]
) -> CurveResult:
    target = options.pop("target", None)
    class_names = options.pop("class_names", None)
    return CausalMetric(model, mode, **options)(x, saliency, target, class_names=class_names)


@dataclass(frozen=True)
class MethodFaithfulness:
    """One method's deletion and insertion curves over a set of images, and its time.

    Attributes
    ----------
    method : str
        The method's name (``"random"`` for the random-map baseline).
    deletion, insertion : CurveResult
        The curves, one row per image.
    seconds : tuple of float
        Time to compute each image's map.
    """

    method: str
    deletion: CurveResult
    insertion: CurveResult
    seconds: tuple[float, ...]
    more: dict[str, CurveResult] = field(default_factory=dict)
    """The other games' curves, by the game's name (:data:`GAMES`)."""

    @property
    def curves(self) -> dict[str, CurveResult]:
        """Every game's curves by name: deletion, insertion, then the others."""
        return {DELETION: self.deletion, INSERTION: self.insertion, **self.more}

    def summary(self) -> dict[str, Any]:
        """Means over the images: method, each game's AUC, seconds per map."""
        areas = {f"{name}_auc": curve.mean_auc for name, curve in self.curves.items()}
        return {"method": self.method, **areas, "seconds": sum(self.seconds) / len(self.seconds)}

    def to_dict(self) -> dict[str, Any]:
        """The summary, per-image values and the curves, JSON-ready."""
        return {
            **self.summary(),
            "per_image": {
                **{f"{name}_auc": curve.auc.tolist() for name, curve in self.curves.items()},
                "seconds": list(self.seconds),
            },
            **{name: curve.to_dict() for name, curve in self.curves.items()},
        }


MEAN_COLUMNS = (
    Column("method"),
    Column("deletion_auc", "deletion AUC ↓", ".4f"),
    Column("insertion_auc", "insertion AUC ↑", ".4f"),
    Column("seconds", "time (s)", ".3f"),
)
"""The columns of :meth:`FaithfulnessReport.format_table` for RISE's two games."""
NOT_BETTER = "not better than random"
"""The table's last column: the games in which a method's mean area does not beat the random
map's (ties count as not better)."""


def beats(game: Game, area: float, random_area: float) -> bool:
    """Whether ``area`` is better than the random map's in ``game`` (strictly)."""
    return area < random_area if game.lower_is_better else area > random_area


@dataclass(frozen=True)
class FaithfulnessReport:
    """Deletion and insertion results of several methods on the same images.

    Attributes
    ----------
    images : tuple of str
        The images' labels, in order.
    methods : tuple of MethodFaithfulness
        One entry per method, the random baseline last.
    """

    images: tuple[str, ...]
    methods: tuple[MethodFaithfulness, ...]

    def __getitem__(self, method: str) -> MethodFaithfulness:
        for entry in self.methods:
            if entry.method == method:
                return entry
        raise UnknownNameError(
            f"no method {method!r} in the report; it has {', '.join(self.names)}"
        )

    @property
    def names(self) -> list[str]:
        """The methods' names, in order."""
        return [entry.method for entry in self.methods]

    @property
    def games(self) -> list[Game]:
        """The games played, in order."""
        return [GAMES[name] for name in self.methods[0].curves] if self.methods else []

    def not_better_than_random(self, method: str) -> list[str]:
        """The games in which ``method``'s mean area does not beat the random map's."""
        names = self.names
        if RANDOM_METHOD not in names or method == RANDOM_METHOD:
            return []
        mine, chance = self[method].summary(), self[RANDOM_METHOD].summary()
        return [
            game.name
            for game in self.games
            if not beats(game, mine[f"{game.name}_auc"], chance[f"{game.name}_auc"])
        ]

    def format_table(self) -> str:
        """The means as a text table: method, each game's AUC (↓ or ↑), time, and the games in
        which the method does not beat the random map."""
        columns = [
            Column("method"),
            *(
                Column(f"{g.name}_auc", f"{g.name.replace('_', ' ')} AUC {g.arrow}", ".4f")
                for g in self.games
            ),
            Column("seconds", "time (s)", ".3f"),
        ]
        means = [entry.summary() for entry in self.methods]
        if RANDOM_METHOD in self.names:
            columns.append(Column("not_better", NOT_BETTER))
            for mean in means:
                lost = self.not_better_than_random(mean["method"])
                baseline = mean["method"] == RANDOM_METHOD
                mean["not_better"] = "(baseline)" if baseline else ", ".join(lost) or "-"
        return format_rows(means, tuple(columns), gap="  ")

    def rows(self) -> list[dict[str, Any]]:
        """The table: one row per method and image, then one ``mean`` row per method."""
        rows = []
        for entry in self.methods:
            per_image = zip(
                self.images,
                entry.deletion.auc.tolist(),
                entry.insertion.auc.tolist(),
                entry.seconds,
                strict=True,
            )
            others = {name: curve.auc.tolist() for name, curve in entry.more.items()}
            for i, (image, deleted, inserted, seconds) in enumerate(per_image):
                row = _row(entry.method, image, deleted, inserted, seconds)
                rows.append(_with_more(row, {name: areas[i] for name, areas in others.items()}))
            mean = entry.summary()
            row = _row(
                entry.method,
                "mean",
                mean["deletion_auc"],
                mean["insertion_auc"],
                mean["seconds"],
            )
            rows.append(_with_more(row, {name: mean[f"{name}_auc"] for name in entry.more}))
        return rows

    def save(self, folder: str | os.PathLike[str], *, model: str | None = None) -> list[Path]:
        """Write ``faithfulness.csv``, ``.json`` and the curves ``.png`` atomically."""
        summary = self.to_dict() if model is None else {"model": model, **self.to_dict()}
        return write_report(
            Path(folder) / "faithfulness",
            summary,
            rows=self.rows(),
            figures={".png": lambda: faithfulness_figure(self)},
        )

    def to_dict(self) -> dict[str, Any]:
        """The whole report, JSON-ready."""
        return {"images": list(self.images), "methods": [m.to_dict() for m in self.methods]}


def evaluate_methods(
    model: object,
    x: Tensor,
    methods: Sequence[str | Explainer],
    *,
    labels: Sequence[str] | None = None,
    target: TargetLike = None,
    score: str = "probability",
    class_names: Sequence[str] | None = None,
    pixels_per_step: int | None = None,
    chunk_size: int = PERTURBATION_CHUNK_SIZE,
    seed: int | None = 0,
    random_baseline: bool = True,
    games: Sequence[str] = DEFAULT_GAMES,
    progress: bool = False,
    **options: Any,
) -> FaithfulnessReport:
    """Explain each image with each method, then play deletion and insertion on every map.

    Each map is computed alone, one image at a time, and timed. The curves follow the class the
    map explains, and the maps explain the same ``score`` that the curves measure.

    Parameters
    ----------
    model : torch.nn.Module, adapter or path of an .onnx file
        The model.
    x : Tensor
        Images ``(N, C, H, W)`` in the model's input space.
    methods : sequence of str or Explainer
        Method names (``salience methods``) or configured explainers.
    labels : sequence of str, optional
        The images' names in the report; default ``image-0``, ``image-1``, ...
    target : int, str, sequence of int, callable or None
        What the maps explain; None: the predicted class. One class per image.
    score : {"probability", "logit"}
        Explained and measured: the softmax probability (RISE) or the logit.
    class_names : sequence of str, optional
        Accept class names as targets.
    pixels_per_step, chunk_size
        As for :class:`CausalMetric`.
    seed : int, optional
        Seed of the random baseline and of the random methods (SmoothGrad, RISE, ...).
    random_baseline : bool
        Add the ``random`` row: maps of uniform noise, and say in the table where a method
        does not beat it.
    games : sequence of str
        The curves played (:data:`GAMES`); deletion and insertion always are. Default:
        RISE's deletion and insertion, and ROAD's MoRF and LeRF.
    progress : bool
        Show progress bars.
    **options
        Options given to every method that accepts them (``layer``, ``n_masks``, ...).

    Returns
    -------
    FaithfulnessReport
    """
    adapter = adapter_for(model)
    x = adapter.prepare_input(x)
    _check_images(x)
    labels = tuple(labels) if labels is not None else tuple(f"image-{i}" for i in range(len(x)))
    if len(labels) != len(x):
        raise InvalidInputError(f"{len(labels)} labels given for {len(x)} images")
    explainers = [
        method
        if isinstance(method, Explainer)
        else make_explainer(adapter, method, **method_options(method, {**options, "seed": seed}))
        for method in methods
    ]
    names = [explainer.name for explainer in explainers]
    if len(set(names)) != len(names) or RANDOM_METHOD in names:
        raise InvalidInputError(f"each method may be asked for once; got {', '.join(names)}")
    spec = parse_target(target, class_names)
    curve_options = {"pixels_per_step": pixels_per_step, "score": score, "chunk_size": chunk_size}
    unknown = [name for name in games if name not in GAMES]
    if unknown:
        raise InvalidInputError(
            f"unknown faithfulness game {unknown[0]!r}; choose from {', '.join(GAMES)}"
        )
    played = [DELETION, INSERTION, *(g for g in dict.fromkeys(games) if g not in MODES)]
    metrics = {
        name: CausalMetric(
            adapter,
            GAMES[name].mode,
            order=GAMES[name].order,
            substrate=GAMES[name].substrate,
            seed=seed,
            progress=progress,
            **curve_options,
        )
        for name in played
    }
    runs: list[Explainer | None] = [*explainers, *([None] if random_baseline else [])]
    results: list[MethodFaithfulness] = []
    bar = tqdm(total=len(runs), desc="faithfulness", unit="method", disable=not progress)
    try:
        for explainer in runs:
            bar.set_postfix_str(explainer.name if explainer else RANDOM_METHOD)
            if explainer is None:  # the random baseline follows the methods' classes
                maps, seconds = _random_maps(x, seed)
                explained = results[0].deletion.targets if results else None
            else:
                maps, explained, seconds = _explain_each(explainer, x, spec, score)
            followed = spec if explained is None or isinstance(spec, Custom) else explained
            curves = {game: metric(x, maps, followed) for game, metric in metrics.items()}
            name = explainer.name if explainer else RANDOM_METHOD
            deleted, inserted = curves.pop(DELETION), curves.pop(INSERTION)
            results.append(MethodFaithfulness(name, deleted, inserted, seconds, curves))
            bar.update()
    finally:
        bar.close()
    return FaithfulnessReport(labels, tuple(results))


def _explain_each(
    explainer: Explainer, x: Tensor, spec: TargetSpec, score: str
) -> tuple[Tensor, Tensor, tuple[float, ...]]:
    """Each image's map ``(N, *S)`` computed alone, the classes explained, the seconds taken."""
    maps, classes, seconds = [], [], []
    for sample in range(len(x)):
        start = time.perf_counter()
        explanation = explainer(x[sample : sample + 1], spec, score=score)
        seconds.append(time.perf_counter() - start)
        maps.append(explanation.attributions[:, 0])
        classes.append(explanation.targets[:, 0])
    return torch.cat(maps), torch.cat(classes), tuple(seconds)


def _random_maps(x: Tensor, seed: int | None) -> tuple[Tensor, tuple[float, ...]]:
    """The random baseline's maps and the seconds per image they took."""
    start = time.perf_counter()
    maps = random_saliency(x, seed=seed)
    return maps, ((time.perf_counter() - start) / len(x),) * len(x)


def _with_more(row: dict[str, Any], areas: dict[str, float]) -> dict[str, Any]:
    """``row`` with the other games' areas, before its time."""
    seconds = row.pop("seconds")
    return {
        **row,
        **{f"{name}_auc": round(area, 6) for name, area in areas.items()},
        "seconds": seconds,
    }


def _row(method: str, image: str, deleted: float, inserted: float, seconds: float) -> dict:
    return {
        "method": method,
        "image": image,
        "deletion_auc": round(deleted, 6),
        "insertion_auc": round(inserted, 6),
        "seconds": round(seconds, 6),
    }


def _check_images(x: Tensor) -> None:
    if not 3 <= x.ndim <= 5:
        raise InvalidInputError(
            f"deletion and insertion change the pixels of images (N, C, H, W), the voxels of "
            f"volumes (N, C, D, H, W) or the steps of signals (N, C, L); got shape "
            f"{tuple(x.shape)}"
        )


def _explained_classes(explanation: Explanation) -> Tensor:
    """The ``(N,)`` classes an explanation's maps explain (its default target)."""
    targets = explanation.targets[:, 0]
    if bool((targets < 0).any()):
        raise InvalidInputError(
            "the explanation explains a custom score: pass the same target to follow its score"
        )
    return targets


def _single_map(explanation: Explanation) -> Tensor:
    """The explanation's maps ``(N, *S)``; it must have one per input."""
    if explanation.attributions.shape[1] != 1:
        raise InvalidInputError(
            f"the explanation has {explanation.attributions.shape[1]} maps per input; evaluate "
            "one target at a time: pass explanation.attributions[:, k] with "
            "target=explanation.targets[:, k]"
        )
    return explanation.attributions[:, 0]


def _pixel_maps(saliency: Tensor, x: Tensor, reduce: str) -> Tensor:
    """Maps ``(N, *S)`` at the input's resolution: channels reduced, coarse grids upsampled."""
    if not isinstance(saliency, Tensor):
        raise UnsupportedError(
            f"expected a saliency tensor or an Explanation, got {type(saliency).__name__}"
        )
    n, channels, *spatial = x.shape
    maps = saliency.detach().to(x.device)
    shape = tuple(maps.shape)
    axes = {1: "l", 2: "h, w", 3: "d, h, w"}[len(spatial)]
    expected = f"(N, {axes}) or (N, C, {axes}) with N = {n}, C = 1 or {channels}"
    if maps.ndim == x.ndim and maps.shape[1] in (1, channels):
        maps = maps[:, 0] if maps.shape[1] == 1 else reduce_channels(maps, reduce, dim=1)
    elif maps.ndim != x.ndim - 1:
        raise InvalidInputError(f"the saliency maps have shape {shape}; expected {expected}")
    if maps.shape[0] != n:
        raise InvalidInputError(
            f"{maps.shape[0]} saliency maps given for {n} images; expected {expected}"
        )
    low = tuple(maps.shape[1:])
    coarser = all(a <= b for a, b in zip(low, spatial, strict=True))
    same_shape = all(
        abs(a * spatial[-1] / b - low[-1]) <= 1 for a, b in zip(low, spatial, strict=True)
    )
    if not coarser or not same_shape:
        raise InvalidInputError(
            f"saliency maps of {'×'.join(map(str, low))} pixels do not fit images of "
            f"{'×'.join(map(str, spatial))}: give maps at the input's resolution or on a "
            "coarser grid of the same shape"
        )
    if not maps.is_floating_point():
        maps = maps.double()
    if not bool(torch.isfinite(maps).all()):
        raise InvalidInputError("the saliency maps contain NaN or infinite values")
    if low != tuple(spatial):
        maps = upsample(maps, tuple(spatial))
    return maps


def faithfulness_figure(report: FaithfulnessReport) -> Figure:
    """Deletion and insertion curves side by side: each method's mean over the images.

    The legend gives each method's mean area; the random baseline is dashed.
    """
    from salience.viz import new_figure

    figure = new_figure(10.0, 4.0, "faithfulness curves")
    axes = figure.subplots(1, 2, sharey=True)
    for axis, mode in zip(axes, MODES, strict=True):
        better = "lower" if mode == DELETION else "higher"
        for entry in report.methods:
            curve = getattr(entry, mode)
            style = {"linestyle": "--", "color": "gray"} if entry.method == RANDOM_METHOD else {}
            axis.plot(
                curve.fractions.numpy(),
                curve.scores.mean(dim=0).numpy(),
                label=f"{entry.method} (AUC {curve.mean_auc:.3f})",
                **style,
            )
        axis.set_title(f"{mode} ({better} AUC is better)")
        verb = "deleted" if mode == DELETION else "inserted"
        axis.set_xlabel(f"fraction of pixels {verb}, most salient first")
        axis.set_xlim(0.0, 1.0)
        axis.legend(fontsize="small")
    kind = report.methods[0].deletion.score_kind if report.methods else "probability"
    axes[0].set_ylabel(f"{kind} of the explained class (mean of {len(report.images)} images)")
    return figure
