"""The model-parameter randomization test of "Sanity Checks for Saliency Maps" (Adebayo 2018).

A map that explains the model should change when the model's weights are replaced by random
ones. The test re-initializes the model one block at a time, from the logits down:

- **cascading**: the randomization accumulates (top block, then the top two, ...), so the last
  step is a fully random network;
- **independent**: one block at a time, the others keep their trained weights.

At every step each method's map is compared with its map on the trained model by the
measures of :mod:`salience.evaluation.similarity`. The class explained stays the one the
trained model predicted (or the target given). All randomization happens on copies with seeded
generators: the user's model is never touched and equal seeds give equal results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from salience.adapters.base import RandomizableAdapter
from salience.adapters.randomize import RandomizationError
from salience.errors import InvalidInputError
from salience.evaluation.report import write_report
from salience.evaluation.similarity import (
    METRIC_TITLES,
    SIMILARITY_METRICS,
    compare,
    compared_map,
    comparison_size,
    slice_mosaic,
)
from salience.opening import adapter_for
from salience.targets import Custom, TargetLike, parse_target, resolve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MODES: tuple[str, ...] = ("cascading", "independent")
VERDICT_METRIC = "spearman_abs"
DEFAULT_THRESHOLD = 0.5
"""A method is "sensitive to the model" when the rank correlation (absolute maps) between its
map on the trained model and its maps on the randomized models, averaged over the steps, is below
this value: its map changed when the weights did."""

SENSITIVE = "sensitive to the model"
INDEPENDENT = "largely independent of the model"


@dataclass(frozen=True)
class Verdict:
    """Whether a method's maps follow the model's weights.

    Attributes
    ----------
    method : str
        The method.
    sensitive : bool
        True when its similarity fell below the threshold.
    similarity : float
        The similarity the verdict is based on: the mean over all steps and samples.
    lowest : float
        The lowest mean similarity of one step, reached at ``lowest_step``.
    lowest_step : str
        The block whose randomization changed the map most (cascading: with those above it).
    metric, threshold
        The measure and the threshold used.
    """

    method: str
    sensitive: bool
    similarity: float
    lowest: float
    lowest_step: str
    metric: str
    threshold: float

    @property
    def text(self) -> str:
        """The verdict in words, with the number and the rule."""
        words = SENSITIVE if self.sensitive else INDEPENDENT
        relation = "<" if self.sensitive else "≥"
        return (
            f"{words} (mean {self.metric} {self.similarity:.2f} {relation} {self.threshold:g}; "
            f"lowest {self.lowest:.2f} at {self.lowest_step})"
        )


@dataclass(frozen=True)
class SanityResult:
    """The outcome of a model-parameter randomization test.

    Attributes
    ----------
    mode : {"cascading", "independent"}
        How the blocks were randomized.
    methods : tuple of str
        The methods tested.
    steps : tuple of str
        The block randomized at each step, top block first (cumulative when cascading).
    similarity : numpy.ndarray
        ``(methods, steps, samples, metrics)``: each measure of :data:`metrics` between the
        map on the trained model and the map after that step.
    maps : numpy.ndarray
        ``(methods, 1 + steps, H, W)``: the normalized absolute maps of the first sample, on the
        trained model and after every step (for the figure).
    metrics : tuple of str
        The measures, in the last axis of ``similarity``.
    seed : int
        The seed of the randomization.
    threshold : float
        The verdict's threshold on ``spearman_abs``.
    """

    mode: str
    methods: tuple[str, ...]
    steps: tuple[str, ...]
    similarity: np.ndarray
    maps: np.ndarray = field(repr=False)
    metrics: tuple[str, ...] = SIMILARITY_METRICS
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD

    def mean(self, metric: str = VERDICT_METRIC) -> np.ndarray:
        """``(methods, steps)``: one measure averaged over the samples."""
        if metric not in self.metrics:
            raise InvalidInputError(
                f"unknown measure {metric!r}; choose one of {', '.join(self.metrics)}"
            )
        return self.similarity[..., self.metrics.index(metric)].mean(axis=-1)

    def verdicts(self) -> dict[str, Verdict]:
        """Per method: sensitive to the model, or largely independent of it."""
        means = self.mean(VERDICT_METRIC)
        verdicts = {}
        for row, method in enumerate(self.methods):
            value = float(means[row].mean())
            step = int(np.argmin(means[row]))
            verdicts[method] = Verdict(
                method,
                value < self.threshold,
                value,
                float(means[row, step]),
                self.steps[step],
                VERDICT_METRIC,
                self.threshold,
            )
        return verdicts

    def rows(self) -> list[dict[str, Any]]:
        """The table: one record per method, step and sample, every measure a column."""
        records = []
        for m, method in enumerate(self.methods):
            for s, step in enumerate(self.steps):
                for n in range(self.similarity.shape[2]):
                    values = dict(zip(self.metrics, self.similarity[m, s, n].tolist(), strict=True))
                    records.append(
                        {
                            "mode": self.mode,
                            "method": method,
                            "step": s + 1,
                            "layer": step,
                            "sample": n,
                            **values,
                        }
                    )
        return records

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: settings, per-step means of every measure, verdicts, all rows."""
        return {
            "mode": self.mode,
            "seed": self.seed,
            "methods": list(self.methods),
            "steps": list(self.steps),
            "metrics": list(self.metrics),
            "mean": {
                metric: dict(zip(self.methods, self.mean(metric).tolist(), strict=True))
                for metric in self.metrics
            },
            "verdicts": {
                method: {
                    "verdict": SENSITIVE if v.sensitive else INDEPENDENT,
                    "metric": v.metric,
                    "mean": v.similarity,
                    "threshold": v.threshold,
                    "lowest": v.lowest,
                    "lowest_step": v.lowest_step,
                }
                for method, v in self.verdicts().items()
            },
            "rows": self.rows(),
        }

    def save(self, folder: str | os.PathLike[str], *, figures: bool = True) -> list[Path]:
        """Write ``sanity_<mode>.csv``, ``.json`` and, with ``figures``, the maps figure
        (``sanity_<mode>.png``) and the curves (``sanity_<mode>_curves.png``); all atomically.
        """
        drawn = {".png": lambda: sanity_figure(self), "_curves.png": lambda: sanity_curves(self)}
        return write_report(
            Path(folder) / f"sanity_{self.mode}",
            self.to_dict(),
            rows=self.rows(),
            figures=drawn if figures else None,
        )


def _fixed_target(
    adapter: Any, inputs: Tensor, target: TargetLike, class_names: Sequence[str] | None
) -> Any:
    """The target to use on every randomized model: what the trained model's target picks."""
    spec = parse_target(target, class_names)
    if isinstance(spec, Custom):
        return spec
    selection = resolve(spec, adapter.forward(inputs))
    if selection.k != 1:
        raise InvalidInputError(
            f"sanity checks explain one target per sample; {target!r} asks for {selection.k}"
        )
    return [int(c) for c in selection.labels()[:, 0]]


def sanity_check(
    model: object,
    x: Tensor,
    methods: Sequence[str],
    *,
    mode: str = "cascading",
    layers: Sequence[str] | None = None,
    seed: int = 0,
    target: TargetLike = None,
    score: str = "logit",
    class_names: Sequence[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    progress: bool = True,
    **options: Any,
) -> SanityResult:
    """Run the model-parameter randomization test.

    Parameters
    ----------
    model : torch.nn.Module or TorchAdapter
        The trained model (never changed: randomization works on copies).
    x : Tensor
        Images ``(N, C, H, W)`` or volumes ``(N, C, D, H, W)`` (their maps are compared as
        mosaics of their slices, :func:`~salience.evaluation.similarity.slice_mosaic`);
        similarities are reported per sample.
    methods : sequence of str
        Registered method names.
    mode : {"cascading", "independent"}
        Accumulate the randomization from the top block down, or randomize one block at a time.
    layers : sequence of str, optional
        The blocks to randomize, top first; default every parameterized block of the model
        (``adapter.randomization_units(x)``).
    seed : int
        Seed of the new weights (and of random methods such as SmoothGrad).
    target, score, class_names
        What is explained, as in :func:`salience.explain`; one target per sample.
    threshold : float
        The verdict's threshold on the Spearman correlation of the absolute maps.
    progress : bool
        Show a progress bar.
    **options
        Method options (``layer``, ``n_samples``, ``steps``...).
    """
    from salience.api import explain_all, make_explainer, method_options

    if mode not in MODES:
        raise InvalidInputError(
            f"unknown randomization mode {mode!r}; choose one of {', '.join(MODES)}"
        )
    if not methods:
        raise InvalidInputError("name at least one method to test")
    adapter = adapter_for(model)
    if not isinstance(adapter, RandomizableAdapter):
        raise RandomizationError(
            "the randomization test re-initializes the model's weights, which "
            f"{type(adapter).__name__} cannot do: pass a torch.nn.Module"
        )
    inputs = adapter.prepare_input(x)
    if inputs.ndim not in (4, 5):
        raise InvalidInputError(
            f"the randomization test compares maps of images (N, C, H, W) or volumes "
            f"(N, C, D, H, W); got inputs of shape {tuple(inputs.shape)}"
        )
    units = adapter.randomization_units(inputs, layers)
    options = {"seed": seed, **options, "progress": False}  # one bar: the test's

    def maps_of(step_adapter: Any, step_target: TargetLike) -> dict[str, Tensor]:
        explainers = [
            make_explainer(step_adapter, m, **method_options(m, options)) for m in methods
        ]
        found = explain_all(
            step_adapter,
            inputs,
            explainers,
            target=step_target,
            score=score,
            class_names=class_names,
        )
        maps = {name: explanation.attributions[:, 0] for name, explanation in found.items()}
        if inputs.ndim == 5:  # a volume's maps are compared as mosaics of their slices
            spatial = tuple(inputs.shape[2:])
            maps = {
                name: torch.stack([slice_mosaic(one, spatial) for one in found_maps])
                for name, found_maps in maps.items()
            }
        return maps

    total = len(units) + 1
    bar = tqdm(total=total, disable=not progress, desc=f"sanity check ({mode})", unit="step")
    fixed = _fixed_target(adapter, inputs, target, class_names)
    reference = maps_of(adapter, fixed)
    bar.update()
    plane = inputs.shape[-2:] if inputs.ndim == 4 else next(iter(reference.values())).shape[-2:]
    size = comparison_size(tuple(plane))
    count = inputs.shape[0]
    similarity = np.zeros((len(methods), len(units), count, len(SIMILARITY_METRICS)))
    maps = np.zeros((len(methods), total, *size), dtype=np.float32)
    prepared = {  # the trained model's maps, prepared once for every step
        method: [compared_map(saliency, size) for saliency in reference[method]]
        for method in methods
    }
    for m, method in enumerate(methods):
        maps[m, 0] = prepared[method][0].absolute
    for s, unit in enumerate(units):
        bar.set_postfix_str(unit.name)
        chosen = units[: s + 1] if mode == "cascading" else [unit]
        step_maps = maps_of(adapter.randomized(chosen, seed=seed), fixed)
        for m, method in enumerate(methods):
            for n in range(count):
                step_map = compared_map(step_maps[method][n], size)
                found = compare(prepared[method][n], step_map)
                similarity[m, s, n] = [found[metric] for metric in SIMILARITY_METRICS]
                if n == 0:
                    maps[m, s + 1] = step_map.absolute
        bar.update()
    bar.close()
    return SanityResult(
        mode,
        tuple(methods),
        tuple(unit.name for unit in units),
        similarity,
        maps,
        seed=seed,
        threshold=threshold,
    )


#: The side of one map in the figures, inches.
CELL_INCHES = 1.3


def sanity_figure(result: SanityResult) -> Figure:
    """The paper's figure: one row per method, the trained model's map, then one column per step.

    Maps are the normalized absolute maps of the first sample, in gray (white = salient).
    """
    from salience.viz import new_figure

    methods, columns = result.maps.shape[:2]
    labels = ["trained", *result.steps]
    figure = new_figure(CELL_INCHES * columns + 1.5, CELL_INCHES * methods + 1.2, "sanity figures")
    axes = figure.subplots(methods, columns, squeeze=False)
    for m, method in enumerate(result.methods):
        for c in range(columns):
            axis = axes[m, c]
            axis.imshow(result.maps[m, c], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if m == 0:
                axis.set_title(labels[c], fontsize=7, rotation=60, ha="left", loc="left")
        axes[m, 0].set_ylabel(method, fontsize=8)
    how = "cumulatively, top down" if result.mode == "cascading" else "one at a time"
    figure.suptitle(f"{result.mode} randomization: blocks re-initialized {how}", fontsize=10)
    return figure


def sanity_curves(result: SanityResult) -> Figure:
    """Each similarity measure against the randomized block, one line per method."""
    from salience.viz import new_figure

    metrics = result.metrics
    figure = new_figure(4.2 * len(metrics), 3.6, "sanity curves")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    positions = np.arange(len(result.steps))
    for axis, metric in zip(axes, metrics, strict=True):
        means = result.mean(metric)
        for m, method in enumerate(result.methods):
            axis.plot(positions, means[m], marker="o", markersize=3, label=method)
        if metric == "spearman_abs":
            axis.axhline(result.threshold, color="gray", linestyle="--", linewidth=0.8)
        axis.set_title(METRIC_TITLES.get(metric, metric), fontsize=9)
        axis.set_xticks(positions, result.steps, rotation=90, fontsize=6)
        axis.set_ylim(min(-0.1, float(np.nanmin(means)) - 0.05), 1.05)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("similarity to the trained model's map")
    axes[-1].legend(fontsize=7, loc="best")
    figure.suptitle(f"{result.mode} randomization", fontsize=10)
    return figure
