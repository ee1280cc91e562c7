"""ROAD's substrate: noisy linear imputation of removed pixels (Rong et al. 2022).

Deleting pixels to a constant leaves a pattern of holes that the model reads as a signal of its
own: a scattered random map "wins" deletion because noise-like holes hurt any image. ROAD
(RemOve And Debias) fills each removed pixel with the weighted mean of its eight neighbours
(1/6 for the four beside it, 1/12 for the diagonals, renormalized at the border), the removed
neighbours being unknowns too: one sparse linear system per image, solved with SciPy, with all
channels as right-hand sides. A little Gaussian noise (σ ``noise`` in the model's input units) is
added to the imputed values, as in the reference implementation (``road_evaluation``, which
Quantus adapts as ``noisy_linear_imputation``).
"""

from __future__ import annotations

import numpy as np

from salience.errors import InvalidInputError

NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (1, 1, 1 / 12),
    (0, 1, 1 / 6),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (0, -1, 1 / 6),
    (-1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (-1, 0, 1 / 6),
)
"""Row offset, column offset and weight of each neighbour."""
ROAD_NOISE = 0.01
"""σ of the noise added to the imputed values (the reference implementation's default)."""


def linear_imputation(
    image: np.ndarray,
    removed: np.ndarray,
    *,
    noise: float = ROAD_NOISE,
    generator: np.random.Generator | None = None,
) -> np.ndarray:
    """``image (C, H, W)`` with the pixels where ``removed (H, W)`` is True imputed.

    Each removed pixel becomes the weighted mean of its neighbours (known or imputed), plus
    ``noise`` × a standard normal draw of ``generator`` (none when ``noise`` is 0).

    Raises
    ------
    InvalidInputError
        When every pixel is removed (nothing to impute from).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    channels, height, width = image.shape
    if removed.shape != (height, width):
        raise InvalidInputError(
            f"the removal mask has shape {removed.shape}; expected {(height, width)}"
        )
    flat_removed = removed.reshape(-1)
    ids = np.flatnonzero(flat_removed)
    if ids.size == 0:
        return image.copy()
    if ids.size == flat_removed.size:
        raise InvalidInputError(
            "ROAD cannot impute an image whose every pixel is removed; keep some pixels "
            "(fractions below 1)"
        )
    values = image.reshape(channels, -1).astype(np.float64)
    unknown = np.full(flat_removed.size, -1)
    unknown[ids] = np.arange(ids.size)
    row0, col0 = np.divmod(ids, width)
    total_weight = np.zeros(ids.size)
    right = np.zeros((ids.size, channels))
    rows, cols, weights = [], [], []
    for dr, dc, weight in NEIGHBOURS:
        row, col = row0 + dr, col0 + dc
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        total_weight[inside] += weight
        which = np.flatnonzero(inside)
        neighbour = row[inside] * width + col[inside]
        known = ~flat_removed[neighbour]
        right[which[known]] += weight * values[:, neighbour[known]].T
        rows.append(which[~known])
        cols.append(unknown[neighbour[~known]])
        weights.append(np.full(int((~known).sum()), -weight))
    diagonal = np.arange(ids.size)
    system = coo_matrix(
        (
            np.concatenate([*weights, total_weight]),
            (np.concatenate([*rows, diagonal]), np.concatenate([*cols, diagonal])),
        ),
        shape=(ids.size, ids.size),
    ).tocsc()
    solved = np.asarray(spsolve(system, right)).reshape(ids.size, channels)
    if noise:
        generator = generator if generator is not None else np.random.default_rng(0)
        solved = solved + noise * generator.standard_normal(solved.shape)
    out = values.copy()
    out[:, ids] = solved.T
    return out.reshape(channels, height, width)
