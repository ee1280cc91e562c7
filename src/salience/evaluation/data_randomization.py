"""The data randomization test of "Sanity Checks for Saliency Maps" (Adebayo et al. 2018).

The same small CNN is trained twice on scikit-learn's 8×8 digits: once with the true labels, once
with the labels permuted, until it has memorized them. A model that memorized random labels has
learned nothing about digits, so a map that explains the model should look different on it. The
maps of held-out digits (each explaining its true class) are compared with the measures of
:mod:`salience.evaluation.similarity`, at 4× the digits' size so that SSIM's window fits.

Runs on the CPU in seconds (true labels) to about half a minute (permuted labels, to 99% training
accuracy). Needs scikit-learn for the data set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from salience.adapters.randomize import initialize
from salience.errors import InvalidInputError, MissingPackageError
from salience.evaluation.randomization import CELL_INCHES
from salience.evaluation.report import Column, format_rows, write_report
from salience.evaluation.similarity import (
    SIMILARITY_METRICS,
    compare,
    compared_map,
    comparison_size,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABELINGS: tuple[str, ...] = ("true", "permuted")
COMPARE_SIZE = comparison_size((8, 8))
"""The size digit maps are compared at (SSIM's Gaussian window is 11 pixels wide)."""
TEST_FRACTION = 1 / 6
MEMORIZED = 0.99
"""Training stops once the training accuracy reaches this (or at ``max_epochs``)."""


@dataclass(frozen=True)
class Digits:
    """The 8×8 digits, scaled to [-1, 1], split into training and test sets by a seed."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def load_digits_split(seed: int = 0) -> Digits:
    """scikit-learn's digits ``(N, 1, 8, 8)``, a sixth held out for testing."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise MissingPackageError(
            "the data randomization test trains on scikit-learn's digits: "
            "pip install 'salience[trust]'"
        ) from error
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held_out = int(len(labels) * TEST_FRACTION)
    test, train = order[:held_out], order[held_out:]
    return Digits(images[train], labels[train], images[test], labels[test])


class DigitsCNN(nn.Module):
    """Two 3×3 convolutions and a wide dense layer: enough capacity to memorize random labels."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.hidden = nn.Linear(32 * 8 * 8, 512)
        self.out = nn.Linear(512, classes)

    def forward(self, x: Tensor) -> Tensor:
        features = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.out(F.relu(self.hidden(features.flatten(1))))


@dataclass(frozen=True)
class TrainedDigits:
    """A model trained on the digits with one labeling, and how well it fits."""

    model: DigitsCNN = field(repr=False)
    labeling: str
    epochs: int
    train_accuracy: float
    test_accuracy: float


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.inference_mode():
        return float((model(images).argmax(dim=1) == labels).float().mean())


def train_digits_model(
    digits: Digits,
    labeling: str = "true",
    *,
    seed: int = 0,
    max_epochs: int = 60,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    progress: bool = True,
) -> TrainedDigits:
    """Train :class:`DigitsCNN` on the digits' true or permuted labels until memorized.

    Parameters
    ----------
    digits : Digits
        The data (:func:`load_digits_split`).
    labeling : {"true", "permuted"}
        Train on the true labels, or on a seeded permutation of them.
    seed : int
        Seeds the initial weights, the permutation and the batch order.
    max_epochs, batch_size, learning_rate
        Adam's schedule; training stops early at 99% training accuracy.
    progress : bool
        Show a progress bar over the epochs.
    """
    if labeling not in LABELINGS:
        raise InvalidInputError(
            f"unknown labeling {labeling!r}; choose one of {', '.join(LABELINGS)}"
        )
    generator = torch.Generator().manual_seed(seed)
    labels = digits.train_labels
    if labeling == "permuted":
        labels = labels[torch.randperm(len(labels), generator=generator)]
    model = DigitsCNN()
    initialize(model, generator)  # seeded, independent of torch's global generator
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    accuracy, epoch = 0.0, 0
    bar = tqdm(range(max_epochs), disable=not progress, desc=f"training ({labeling} labels)")
    for epoch in bar:  # noqa: B007 - the last epoch is reported
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            loss = F.cross_entropy(model(digits.train_images[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        accuracy = _accuracy(model, digits.train_images, labels)
        bar.set_postfix_str(f"train accuracy {accuracy:.1%}")
        if accuracy >= MEMORIZED:
            break
    bar.close()
    model.eval().requires_grad_(False)
    test = _accuracy(model, digits.test_images, digits.test_labels)
    return TrainedDigits(model, labeling, epoch + 1, accuracy, test)


@dataclass(frozen=True)
class DataRandomizationResult:
    """Maps of a model trained on true labels against one trained on permuted labels.

    Attributes
    ----------
    methods : tuple of str
        The methods compared.
    similarity : numpy.ndarray
        ``(methods, samples, metrics)``: each measure between the two models' maps of a digit.
    maps : numpy.ndarray
        ``(methods, 2, shown, H, W)``: normalized absolute maps of the first digits, true-label
        model first, for the figure.
    images : numpy.ndarray
        ``(shown, 8, 8)``: those digits, in [0, 1].
    models : tuple of TrainedDigits
        The two trained models (true labels first).
    metrics : tuple of str
        The measures, in the last axis of ``similarity``.
    """

    methods: tuple[str, ...]
    similarity: np.ndarray
    maps: np.ndarray = field(repr=False)
    images: np.ndarray = field(repr=False)
    models: tuple[TrainedDigits, TrainedDigits] = field(repr=False)
    metrics: tuple[str, ...] = SIMILARITY_METRICS

    def mean(self, metric: str = "spearman_abs") -> np.ndarray:
        """``(methods,)``: one measure averaged over the digits."""
        if metric not in self.metrics:
            raise InvalidInputError(
                f"unknown measure {metric!r}; choose one of {', '.join(self.metrics)}"
            )
        return self.similarity[..., self.metrics.index(metric)].mean(axis=-1)

    def rows(self) -> list[dict[str, Any]]:
        """One record per method with the mean of every measure."""
        return [
            {"method": method, **{metric: float(self.mean(metric)[m]) for metric in self.metrics}}
            for m, method in enumerate(self.methods)
        ]

    def format_table(self) -> str:
        """:meth:`rows` as a text table: each method's mean of every measure."""
        columns = [Column("method", width=22)]
        columns += [Column(metric, spec=".2f", width=15) for metric in self.metrics]
        return format_rows(self.rows(), columns, indent="  ")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: the models' accuracies and the mean similarities."""
        return {
            "models": [
                {
                    "labels": trained.labeling,
                    "epochs": trained.epochs,
                    "train_accuracy": trained.train_accuracy,
                    "test_accuracy": trained.test_accuracy,
                }
                for trained in self.models
            ],
            "samples": int(self.similarity.shape[1]),
            "compared_at": list(COMPARE_SIZE),
            "methods": self.rows(),
        }

    def save(self, folder: str | os.PathLike[str], *, figures: bool = True) -> list[Path]:
        """Write ``data_randomization.csv``, ``.json`` and ``.png``, atomically."""
        return write_report(
            Path(folder) / "data_randomization",
            self.to_dict(),
            rows=self.rows(),
            figures={".png": lambda: data_randomization_figure(self)} if figures else None,
        )


def data_randomization_test(
    methods: Sequence[str],
    *,
    samples: int = 32,
    shown: int = 4,
    seed: int = 0,
    max_epochs: int = 60,
    progress: bool = True,
    **options: Any,
) -> DataRandomizationResult:
    """Train on true and on permuted digit labels and compare the two models' maps.

    Parameters
    ----------
    methods : sequence of str
        Registered method names (CAMs look at the last convolution).
    samples : int
        How many held-out digits to compare.
    shown : int
        How many of them the figure shows.
    seed : int
        Seeds the split, the permutation, the training and random methods.
    max_epochs : int
        The training cap of each model.
    progress : bool
        Show progress bars.
    **options
        Method options (``n_samples``, ``steps``...).
    """
    from salience.api import explain_all, make_explainer, method_options

    if not methods:
        raise InvalidInputError("name at least one method to test")
    digits = load_digits_split(seed)
    if not 1 <= samples <= len(digits.test_labels):
        raise InvalidInputError(f"samples must be in 1..{len(digits.test_labels)}, got {samples}")
    shown = min(shown, samples)
    images = digits.test_images[:samples]
    target = [int(label) for label in digits.test_labels[:samples]]
    options = {"seed": seed, **options, "progress": False}
    trained = tuple(
        train_digits_model(digits, labeling, seed=seed, max_epochs=max_epochs, progress=progress)
        for labeling in LABELINGS
    )
    maps = []
    for model in trained:
        explainers = [make_explainer(model.model, m, **method_options(m, options)) for m in methods]
        found = explain_all(model.model, images, explainers, target=target)
        maps.append({name: e.attributions[:, 0] for name, e in found.items()})
    similarity = np.zeros((len(methods), samples, len(SIMILARITY_METRICS)))
    pictures = np.zeros((len(methods), 2, shown, *COMPARE_SIZE), dtype=np.float32)
    for m, method in enumerate(methods):
        for n in range(samples):
            pair = [compared_map(side[method][n], COMPARE_SIZE) for side in maps]
            found = compare(*pair)
            similarity[m, n] = [found[metric] for metric in SIMILARITY_METRICS]
            if n < shown:
                for side, prepared in enumerate(pair):
                    pictures[m, side, n] = prepared.absolute
    return DataRandomizationResult(
        tuple(methods), similarity, pictures, ((images[:shown, 0] + 1.0) / 2.0).numpy(), trained
    )


def data_randomization_figure(result: DataRandomizationResult) -> Figure:
    """Digits on top; below, per method, each digit's map from the true-label model and from
    the permuted-label model side by side."""
    from salience.viz import new_figure

    methods, _, shown = result.maps.shape[:3]
    figure = new_figure(CELL_INCHES * 2 * shown + 1.0, CELL_INCHES * (methods + 1) + 0.8)
    axes = figure.subplots(methods + 1, 2 * shown, squeeze=False)
    for n in range(shown):
        for side, label in enumerate(("true labels", "permuted labels")):
            column = 2 * n + side
            axes[0, column].imshow(result.images[n], cmap="gray", vmin=0.0, vmax=1.0)
            axes[0, column].set_title(label, fontsize=7)
            for m in range(methods):
                axes[m + 1, column].imshow(result.maps[m, side, n], cmap="gray", vmin=0, vmax=1)
    for m, method in enumerate(result.methods):
        axes[m + 1, 0].set_ylabel(method, fontsize=8)
    axes[0, 0].set_ylabel("digit", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    accuracies = ", ".join(
        f"{t.labeling} labels: train {t.train_accuracy:.0%}, test {t.test_accuracy:.0%}"
        for t in result.models
    )
    figure.suptitle(f"data randomization ({accuracies})", fontsize=9)
    return figure
