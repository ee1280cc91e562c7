"""SmoothGrad (Smilkov et al. 2017) and VarGrad over any single-pass gradient method."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from salience.errors import InvalidInputError
from salience.methods.base import (
    DEFAULT_CHUNK_SIZE,
    EXPLAINER,
    Attribution,
    Explainer,
    SinglePassExplainer,
    register_explainer,
)
from salience.methods.convergence import (
    AGREEMENT_THRESHOLD,
    AUTO,
    half_of,
    split_half_info,
    with_count,
)
from salience.methods.options import (
    CHUNK_SIZE,
    PROGRESS,
    SEED,
    Option,
    check_option_names,
)
from salience.methods.sampling import make_generator, map_in_chunks
from salience.registry import get
from salience.targets import TargetSpec

BASE = Option(
    "base", str, "gradient", "the single-pass method over the noisy copies (gradient, a CAM, ...)"
)
N_SAMPLES = Option(
    "n_samples",
    int,
    50,
    "SmoothGrad/VarGrad samples: noisy copies per input, or auto (doubled until the map "
    "converges, up to max_samples)",
    flag="samples",
    low=1,
    request_max=500,
    auto=True,
)
MAX_SAMPLES = Option(
    "max_samples", int, 512, "the most samples n_samples='auto' may grow to", low=2
)
NOISE = Option(
    "noise",
    float,
    0.15,
    "SmoothGrad σ / input range",
    flag="noise",
    low=0,
    request_max=1,
)
SQUARED = Option("squared", bool, False, "average the squared maps (SmoothGrad-Squared)")


def noise_scale(x: Tensor, noise: float) -> Tensor:
    """Per-sample σ: ``noise`` × (max − min) of that sample (Smilkov et al.), shape ``(N,)``."""
    flat = x.reshape(x.shape[0], -1)
    return noise * (flat.amax(dim=1) - flat.amin(dim=1))


class _NoiseExplainer(Explainer):
    """Averages statistics of a gradient method's maps over noisy copies of the input."""

    statistic = "mean"
    options = (BASE, N_SAMPLES, MAX_SAMPLES, NOISE, SEED, CHUNK_SIZE, PROGRESS)
    forwards_options = True

    def __init__(
        self,
        model: object,
        *,
        base: str = BASE.default,
        n_samples: int | str = N_SAMPLES.default,
        max_samples: int = MAX_SAMPLES.default,
        noise: float = NOISE.default,
        seed: int | None = SEED.default,
        chunk_size: int | None = CHUNK_SIZE.default,
        progress: bool = PROGRESS.default,
        **base_options: Any,
    ) -> None:
        super().__init__(model)
        base_class = get(EXPLAINER, BASE.check(base))
        if not getattr(base_class, "single_pass", False):
            raise InvalidInputError(
                f"{self.name} runs over single-pass methods; {base!r} is not one (use "
                "gradient, gradient_x_input, guided_backprop or a gradient CAM such as gradcam)"
            )
        check_option_names({self.name: type(self), base_class.name: base_class}, base_options)
        self.base: SinglePassExplainer = base_class(self.adapter, **base_options)
        self.base_options = base_options
        self.n_samples = N_SAMPLES.check(n_samples)
        self.max_samples = MAX_SAMPLES.check(max_samples)
        self.noise = NOISE.check(noise)
        self.seed = SEED.check(seed)
        self.chunk_size = CHUNK_SIZE.check(chunk_size) or DEFAULT_CHUNK_SIZE
        self.progress = PROGRESS.check(progress)

    def params(self) -> dict[str, Any]:
        """Configuration."""
        return {
            "base": self.base.name,
            **self.base_options,
            "n_samples": self.n_samples,
            **({"max_samples": self.max_samples} if self.n_samples == AUTO else {}),
            "noise": self.noise,
            "seed": self.seed,
        }

    def noisy_inputs(self, x: Tensor, count: int | None = None) -> Tensor:
        """``(N * count, ...)``: sample-major noisy copies of each input (count: n_samples).

        All noise is drawn before chunking, so the map does not depend on ``chunk_size``.
        """
        count = self.n_samples if count is None else count
        generator = make_generator(self.seed, x.device)
        sigma = noise_scale(x, self.noise).reshape(-1, 1, *([1] * (x.ndim - 1)))
        draws = torch.randn(
            (x.shape[0], count, *x.shape[1:]),
            generator=generator,
            device=x.device,
            dtype=x.dtype,
        )
        return (x.unsqueeze(1) + sigma * draws).reshape(-1, *x.shape[1:])

    def attribute(
        self, x: Tensor, spec: TargetSpec, score: str, *, output_kind: str | None = None
    ) -> Attribution:
        """The statistic over the samples; with ``n_samples="auto"``, over as many as needed."""
        return with_count(
            lambda count: self._attribute(x, spec, score, count), self.n_samples, self.max_samples
        )

    def _attribute(self, x: Tensor, spec: TargetSpec, score: str, count: int) -> Attribution:
        """Accumulate the statistic over ``count`` noisy samples, chunk by chunk.

        Each input's samples are summed in two halves (:func:`~salience.methods.convergence.
        half_of`), whose maps give the split-half agreement in ``info["convergence"]``.
        """
        selection, scores, outputs = self.unperturbed_pass(x, spec, score)
        points = self.noisy_inputs(x, count)
        repeated = selection.repeat(count)
        total: Tensor | None = None
        total_sq: Tensor | None = None
        # row → (input, half): the sums of each input's two halves of samples, side by side
        second_half = (torch.arange(count, device=x.device) >= half_of(count)).long()
        owner = (2 * torch.arange(x.shape[0], device=x.device)).repeat_interleave(count)
        owner = owner + second_half.repeat(x.shape[0])
        chunks = map_in_chunks(
            points.shape[0],
            lambda rows: self.base.attribute_fixed(points[rows], repeated.take(rows), score),
            self.chunk_size,
            progress=self.progress,
            description=self.name,
        )
        for rows, maps in chunks:
            if total is None:  # the base method's map shape (input or layer grid)
                total = maps.new_zeros((2 * x.shape[0], *maps.shape[1:]))
                if self.statistic == "variance":
                    total_sq = torch.zeros_like(total)
            values = maps.square() if self.statistic == "mean_square" else maps
            total.index_add_(0, owner[rows], values)
            if total_sq is not None:
                total_sq.index_add_(0, owner[rows], maps.square())
        assert total is not None
        sizes = (half_of(count), count - half_of(count))
        halves = [self._statistic(total, total_sq, half, size) for half, size in enumerate(sizes)]
        whole = self._statistic(
            total.unflatten(0, (-1, 2)).sum(dim=1),
            None if total_sq is None else total_sq.unflatten(0, (-1, 2)).sum(dim=1),
            None,
            count,
        )
        info = {
            "samples": count,
            "convergence": split_half_info(*halves, count, AGREEMENT_THRESHOLD),
        }
        return Attribution(whole, selection, scores, info, outputs=outputs)

    def _statistic(
        self, total: Tensor, total_sq: Tensor | None, half: int | None, size: int
    ) -> Tensor | None:
        """The statistic of ``size`` samples from their sums; ``half`` picks one of two halves."""
        if size == 0:
            return None
        if half is not None:
            total = total[half::2]
            total_sq = None if total_sq is None else total_sq[half::2]
        mean = total / size
        if total_sq is not None:
            mean = total_sq / size - mean.square()
        return mean


@register_explainer("smoothgrad")
class SmoothGrad(_NoiseExplainer):
    """SmoothGrad: the mean of a gradient method's maps over Gaussian-noised inputs.

    Parameters
    ----------
    model : torch.nn.Module or adapter
        The model to explain.
    base : str
        The single-pass method to smooth (``gradient``, ``gradient_x_input``, ``guided_backprop``).
    n_samples : int or "auto"
        Number of noisy samples per input; ``"auto"`` doubles it from 32 until the split-half
        agreement (``info["convergence"]``, :mod:`salience.methods.convergence`) is at least
        0.75, up to ``max_samples``.
    max_samples : int
        The cap of ``"auto"``.
    noise : float
        σ of the noise as a fraction of each input's value range (max − min).
    squared : bool
        Average the squared maps (SmoothGrad-Squared) instead of the maps.
    seed : int or None
        Seed of the noise; the same seed gives the same map.
    chunk_size : int
        Noisy samples per forward/backward pass; does not change the result.
    progress : bool
        Show a progress bar.
    **base_options
        Passed to the base method, e.g. ``absolute=True`` for the gradient.
    """

    paper = "Smilkov et al. 2017"
    options = (SQUARED,)

    def __init__(self, model: object, *, squared: bool = SQUARED.default, **options: Any) -> None:
        super().__init__(model, **options)
        self.squared = SQUARED.check(squared)
        self.statistic = "mean_square" if squared else "mean"

    def params(self) -> dict[str, Any]:
        """Configuration."""
        return {**super().params(), "squared": self.squared}


@register_explainer("vargrad")
class VarGrad(_NoiseExplainer):
    """VarGrad: the variance of a gradient method's maps over Gaussian-noised inputs.

    Takes the same parameters as :class:`SmoothGrad` except ``squared``.
    """

    paper = "Adebayo et al. 2018"

    statistic = "variance"
