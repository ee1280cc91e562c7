"""The result of every method: maps at the method's native resolution plus what they explain."""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from salience.errors import InvalidInputError
from salience.fileio import write_bytes_atomic

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Explanation:
    """Saliency maps for a batch of inputs.

    Attributes
    ----------
    attributions : Tensor
        ``(N, K, *S)``: for each of ``N`` samples and ``K`` targets, a map at the method's native
        resolution (the input's shape ``S`` for gradient methods).
    method : str
        Registered name of the method.
    targets : Tensor
        ``(N, K)`` output indices explained (``-1`` for a custom score).
    scores : Tensor
        ``(N, K)`` the explained score of each target on the (unperturbed) input.
    score_kind : str
        ``"logit"`` or ``"probability"``.
    target_names : tuple of tuple of str, optional
        Class names of ``targets`` when the model has them.
    params : mapping
        The method's configuration.
    info : mapping
        Diagnostics, e.g. Integrated Gradients' completeness error.
    model : str, optional
        Name of the model.
    outputs : Tensor, optional
        ``(N, ...)`` the model's outputs (logits) on the explained inputs, when the method ran
        the model on them; kept in memory, not written by :meth:`save`.
    feature_names : tuple of str, optional
        The name of each input feature, for maps of feature vectors ``(N, K, F)`` (tabular
        rows); written by :meth:`save` when given.
    geometry : mapping
        What the input was, when it is not an image: ``{"modality": "volume"}`` with the scan's
        shape, spacing and affine, ``{"modality": "signal"}`` with its length and channel
        names (:meth:`with_geometry`); empty for images.
    """

    attributions: Tensor
    method: str
    targets: Tensor
    scores: Tensor
    score_kind: str = "logit"
    target_names: tuple[tuple[str, ...], ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    outputs: Tensor | None = field(default=None, repr=False)
    feature_names: tuple[str, ...] | None = None
    geometry: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        count, targets = self.targets.shape
        names = self.target_names[0] if self.target_names else self.targets[0].tolist()
        shown = ", ".join(str(name) for name in names[:3]) + (", ..." if targets > 3 else "")
        model = f", model {self.model}" if self.model else ""
        return (
            f"<Explanation {self.method}: {count} input(s) × {targets} target(s) [{shown}], "
            f"maps {tuple(self.attributions.shape[2:])} ({self.score_kind}){model}>"
        )

    def overlay(
        self,
        image: Any = None,
        *,
        sample: int = 0,
        target: int = 0,
        **display: Any,
    ) -> np.ndarray:
        """One map coloured over its image, in one call: channel reduction, the way back onto
        the photo and the colour scale, as ``salience explain`` draws it.

        Parameters
        ----------
        image : PreparedImage, numpy.ndarray or None
            The prepared image (the map goes back through its crop onto the photo), a uint8
            RGB or grayscale array (the map is stretched over it), or None (the map alone).
        sample, target : int
            Which map.
        **display
            :class:`salience.render.DisplayOptions` fields: ``reduce``, ``sign``, ``cmap``,
            ``alpha``, ``percentile``, ``smooth``.

        Returns
        -------
        numpy.ndarray
            uint8 ``(H, W, 3)``.
        """
        return self._drawn(image, sample, target, display).overlay

    def figure_png(
        self, image: Any = None, *, sample: int = 0, target: int = 0, **display: Any
    ) -> bytes:
        """:meth:`overlay` as a PNG figure: titled (class, probability, method and its options)
        and with its colorbar in the map's units."""
        from salience.render import sample_title

        drawn = self._drawn(image, sample, target, display)
        return drawn.figure_png(sample_title(self, sample, target))

    def show(self, image: Any = None, *, sample: int = 0, target: int = 0, **display: Any) -> None:
        """Show :meth:`figure_png` in a notebook (IPython), else in the system's image viewer."""
        png = self.figure_png(image, sample=sample, target=target, **display)
        try:
            from IPython import get_ipython
            from IPython.display import Image as IPythonImage
            from IPython.display import display as ipython_display
        except ImportError:
            get_ipython = None
        if get_ipython is not None and get_ipython() is not None:
            ipython_display(IPythonImage(png))
            return
        from PIL import Image

        Image.open(io.BytesIO(png)).show()

    def _repr_png_(self) -> bytes:
        return self.figure_png()

    def _repr_html_(self) -> str:
        import base64
        import html

        encoded = base64.b64encode(self._repr_png_()).decode("ascii")
        return (
            f"<div><code>{html.escape(repr(self))}</code><br>"
            f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(self.method)}"></div>'
        )

    def _drawn(self, image: Any, sample: int, target: int, display: Mapping[str, Any]) -> Any:
        from salience.render import DisplayOptions, draw

        return draw(self, image, sample=sample, target=target, display=DisplayOptions(**display))

    def __len__(self) -> int:
        return int(self.attributions.shape[0])

    def map(self, sample: int = 0, target: int = 0) -> Tensor:
        """The map of one sample and one target, shape ``S``."""
        return self.attributions[sample, target]

    def select(self, sample: int) -> Explanation:
        """The explanation of one sample of the batch, as a batch of one (its maps, targets,
        scores, names and outputs; the method's configuration and info as they are)."""
        if not 0 <= sample < len(self):
            raise InvalidInputError(
                f"no sample {sample} in an explanation of {len(self)} samples; "
                f"choose one of 0 to {len(self) - 1}"
            )
        rows = slice(sample, sample + 1)
        return replace(
            self,
            attributions=self.attributions[rows],
            targets=self.targets[rows],
            scores=self.scores[rows],
            target_names=None if self.target_names is None else self.target_names[rows],
            outputs=None if self.outputs is None else self.outputs[rows],
        )

    def numpy(self) -> np.ndarray:
        """All maps as a numpy array ``(N, K, *S)``."""
        return self.attributions.detach().cpu().numpy()

    def with_names(self, class_names: list[str] | None, model: str | None = None) -> Explanation:
        """A copy that carries class names for its targets (and the model's name)."""
        names = None
        if class_names is not None:
            names = tuple(
                tuple(class_names[i] if 0 <= i < len(class_names) else str(i) for i in row)
                for row in self.targets.tolist()
            )
        return replace(self, target_names=names, model=model if model is not None else self.model)

    def figure_suffix(self, target: int, sample: int = 0) -> str:
        """What tells one target's files from the others': nothing for a single target, else
        its rank and its class name made safe for a file name (``_top1_egyptian-cat``), or its
        class index when the explanation carries no names (``_top1_class285``)."""
        if self.targets.shape[1] == 1:
            return ""
        index = int(self.targets[sample, target])
        name = self.target_names[sample][target] if self.target_names else ""
        return f"_top{target + 1}_{_file_safe(name) or f'class{index}'}"

    def with_features(self, feature_names: list[str] | tuple[str, ...]) -> Explanation:
        """A copy that names the input features of its ``(N, K, F)`` maps.

        Raises
        ------
        InvalidInputError
            When the count of names is not the maps' last dimension.
        """
        width = int(self.attributions.shape[-1])
        if self.attributions.ndim != 3 or len(feature_names) != width:
            raise InvalidInputError(
                f"{len(feature_names)} feature names for maps of shape "
                f"{tuple(self.attributions.shape)}; give one name per feature of (N, K, F) maps"
            )
        return replace(self, feature_names=tuple(str(name) for name in feature_names))

    @property
    def modality(self) -> str:
        """``"volume"``, ``"signal"``, …; ``"image"`` when no geometry is stored."""
        return str(self.geometry.get("modality", "image"))

    def with_geometry(self, geometry: Mapping[str, Any]) -> Explanation:
        """A copy that stores the input's modality and geometry (saved in the ``.json``)."""
        return replace(self, geometry=dict(geometry))

    def metadata(self) -> dict[str, Any]:
        """Everything but the maps, as JSON-ready values."""
        features = {} if self.feature_names is None else {"feature_names": list(self.feature_names)}
        return {
            "format": FORMAT_VERSION,
            "method": self.method,
            "model": self.model,
            "shape": list(self.attributions.shape),
            "targets": self.targets.tolist(),
            "target_names": [list(row) for row in self.target_names] if self.target_names else None,
            "scores": self.scores.tolist(),
            "score_kind": self.score_kind,
            "params": _jsonable(self.params),
            "info": _jsonable(self.info),
            **features,
            **({"geometry": _jsonable(self.geometry)} if self.geometry else {}),
        }

    def to_bytes(self, *, compress: bool = True) -> tuple[bytes, bytes]:
        """What :meth:`save` writes: the ``.npz`` (the maps) and the ``.json`` (the metadata).

        ``compress=False`` stores the maps uncompressed: much faster for input-sized maps (whose
        float noise compresses little); :meth:`load` reads both.
        """
        buffer = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buffer, attributions=self.numpy())
        return buffer.getvalue(), json.dumps(self.metadata(), indent=2).encode()

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``PATH.npz`` (the maps) and ``PATH.json`` (the metadata) atomically."""
        base = Path(path)
        if base.suffix in (".npz", ".json"):
            base = base.with_suffix("")
        npz, sidecar = base.with_suffix(".npz"), base.with_suffix(".json")
        maps, metadata = self.to_bytes()
        write_bytes_atomic(npz, maps)
        write_bytes_atomic(sidecar, metadata)
        return npz, sidecar

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read an explanation written by :meth:`save`."""
        base = Path(path)
        if base.suffix in (".npz", ".json"):
            base = base.with_suffix("")
        meta = json.loads(base.with_suffix(".json").read_text())
        with np.load(base.with_suffix(".npz")) as data:
            attributions = torch.from_numpy(data["attributions"])
        names = meta.get("target_names")
        return cls(
            attributions=attributions,
            method=meta["method"],
            targets=torch.tensor(meta["targets"], dtype=torch.long),
            scores=torch.tensor(meta["scores"], dtype=attributions.dtype),
            score_kind=meta["score_kind"],
            target_names=tuple(tuple(row) for row in names) if names else None,
            params=meta["params"],
            info=meta["info"],
            model=meta.get("model"),
            feature_names=tuple(meta["feature_names"]) if meta.get("feature_names") else None,
            geometry=meta.get("geometry", {}),
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist() if value.numel() <= 64 else f"tensor{tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{value.shape}"
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


FILE_NAME_PART_LENGTH = 40
"""The most characters a class name gives a file name."""


def _file_safe(text: str) -> str:
    """``text`` lowercased, accents dropped, each run of other characters than letters and
    digits one ``-`` (``"Egyptian cat"``: ``egyptian-cat``), at most
    :data:`FILE_NAME_PART_LENGTH` long."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-")
    return safe[:FILE_NAME_PART_LENGTH].rstrip("-")
