"""1-D signals (ECG, EEG, sensor time series): reading them, and each channel's trace drawn with
its saliency as a coloured band beneath it.

A signal is read from ``.npy`` (``(C, L)`` channels first, or ``(L,)`` for one channel; never
unpickled) or CSV (one column per channel, one row per time step, the header optional and used
as channel names) into a :class:`Signal`; the model takes ``signal.tensor()``, ``(1, C, L)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from salience.arrays import ArrayFileError, check_input_shape, read_csv_columns, read_npy
from salience.errors import InvalidInputError
from salience.postprocess import upsample
from salience.viz import ColorScale, add_colorbar, cmap_name, colorize, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIGNAL_SUFFIXES = (".csv",)
DEFAULT_MAX_SAMPLES = 16 * 2**20
"""The most values (all channels) a signal may have: 64 MiB as float32."""


def is_signal_file(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is a CSV table of a signal."""
    return str(name).lower().endswith(SIGNAL_SUFFIXES)


@dataclass(frozen=True)
class Signal:
    """A multichannel signal.

    Attributes
    ----------
    data : numpy.ndarray
        float32 ``(C, L)``.
    channels : tuple of str
        One name per channel (the CSV header, else ``"0"``, ``"1"``, …).
    label : str
        The file's name.
    """

    data: np.ndarray
    channels: tuple[str, ...]
    label: str = "signal"

    @property
    def length(self) -> int:
        """The number of time steps ``L``."""
        return int(self.data.shape[1])

    def tensor(self) -> Tensor:
        """The signal as a batch of one, ``(1, C, L)`` float32."""
        return torch.from_numpy(np.ascontiguousarray(self.data)).unsqueeze(0)

    def geometry(self) -> dict[str, Any]:
        """What an :class:`~salience.explanation.Explanation` stores of the signal."""
        return {
            "modality": "signal",
            "source": self.label,
            "length": self.length,
            "channels": list(self.channels),
        }


def load_signal(path: str | os.PathLike[str], *, max_samples: int = DEFAULT_MAX_SAMPLES) -> Signal:
    """Read a signal from ``.npy`` or CSV (see the module's description).

    Raises
    ------
    ArrayFileError
        For a file of another rank, a cell that is not a number, rows of different lengths,
        more than ``max_samples`` values or non-finite values.
    """
    file = Path(path)
    if is_signal_file(file):
        data, header = read_csv_columns(file, max_values=max_samples)
    else:
        data, header = read_npy(file, max_values=max_samples), None
        if data.ndim == 1:
            data = data[None]
        if data.ndim != 2:
            raise ArrayFileError(
                f"{file.name} has shape {data.shape}; a signal is (C, L) channels first or (L,)"
            )
    names = tuple(header) if header else tuple(str(c) for c in range(data.shape[0]))
    return Signal(np.ascontiguousarray(data), names, file.name)


def check_fits(signal: Signal, expected: tuple[int | None, ...] | None, model: str) -> None:
    """Refuse a signal whose shape is not the ``(N, C, L)`` the model takes (None: no check)."""
    check_input_shape(
        (1, *signal.data.shape),
        expected,
        model=model,
        label=signal.label,
        kind="signals (channels, time steps)",
        fix="give one column per channel it reads, cut or resample to that length",
    )


def signal_map(explanation_map: Tensor, length: int) -> np.ndarray:
    """One target's map ``(C, l)`` or ``(l,)`` as float32 at the signal's length: a coarser map
    (a CAM's) upsampled linearly; per-channel maps stay per channel."""
    saliency = explanation_map.detach().float().cpu()
    if saliency.ndim not in (1, 2):
        raise InvalidInputError(
            f"a signal's map is (L,) or (C, L), got shape {tuple(saliency.shape)}"
        )
    if saliency.shape[-1] != length:
        saliency = upsample(saliency, (length,))
    return saliency.numpy()


def signal_figure(
    signal: Signal,
    saliency: np.ndarray,
    *,
    cmap: str | None = None,
    title: str | None = None,
    label: str = "attribution",
) -> Figure:
    """Each channel's trace, and beneath it the saliency as a coloured band along time.

    ``saliency`` is ``(L,)`` (one band, shown under every channel: a CAM, occlusion, RISE) or
    ``(C, L)`` (a band per channel: the gradient family). Signed maps get a diverging scale
    centred on 0; all bands share one scale, read back by the colorbar on the right (numbers
    in the map's units, named by ``label``).
    """
    bands = np.broadcast_to(saliency, signal.data.shape) if saliency.ndim == 1 else saliency
    if bands.shape != signal.data.shape:
        raise InvalidInputError(
            f"the map {saliency.shape} does not fit the signal {signal.data.shape}; "
            "resize it with salience.signals.signal_map"
        )
    signed = bool(bands.min() < 0 < bands.max())
    bound = float(np.abs(bands).max()) or 1.0
    low, high = (-bound, bound) if signed else (float(bands.min()), float(bands.max()))
    high = max(high, low + 1e-12)
    count = signal.data.shape[0]
    figure = new_figure(9.0, 1.2 + 1.3 * count, "signal figure")
    axes = figure.subplots(2 * count, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1] * count})
    time = np.arange(signal.length)
    for c in range(count):
        trace, band = axes[2 * c], axes[2 * c + 1]
        trace.plot(time, signal.data[c], color="black", linewidth=0.8)
        trace.set_ylabel(signal.channels[c], rotation=0, ha="right", va="center")
        trace.set_xlim(-0.5, signal.length - 0.5)
        colours = colorize(bands[c][None], cmap, signed=signed, vmin=low, vmax=high)
        band.imshow(colours, aspect="auto", extent=(-0.5, signal.length - 0.5, 0, 1))
        band.set_yticks([])
    axes[-1].set_xlabel("time step")
    add_colorbar(figure, ColorScale("all", cmap_name(cmap, signed), low, high, label), ax=axes)
    if title:
        figure.suptitle(title)
    return figure


def save_signal_figure(
    path: str | os.PathLike[str], signal: Signal, saliency: np.ndarray, **options: Any
) -> Path:
    """Write :func:`signal_figure` as a PNG, atomically."""
    return save_figure(signal_figure(signal, saliency, **options), path)
