"""What the server computes, without HTTP: models loaded once, menus, predictions, rendered maps.

The models are opened once (:class:`ModelPool`) and shared by every request; each request builds
its own explainers (stateless configuration) on a :class:`~salience.server.watch.WatchedAdapter`,
so concurrent requests never share per-call state.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from salience import postprocess
from salience.adapters.base import DifferentiableAdapter, LayerAccessAdapter
from salience.errors import InvalidInputError
from salience.images import PreparedImage
from salience.loading import LoadedModel
from salience.render import DisplayOptions, View, encode
from salience.render import render as render_map
from salience.server.limits import RequestRejectedError

VIEW_MAX_SIDE = 640
"""Longest side of the photo the page shows (and the maps are rendered on): the server's
``DisplayOptions.view_size``."""
PREDICTIONS = 5
SHOWN_COLORMAPS = ("jet", "viridis", "inferno", "magma", "hot", "gray", "RdBu_r")


class ModelPool:
    """The models a server explains, opened once and shared by all requests.

    Parameters
    ----------
    models : sequence of LoadedModel
        The opened models (``salience.loading.open_model``); the first is the default.
    """

    def __init__(self, models: Sequence[LoadedModel]) -> None:
        if not models:
            raise InvalidInputError("give at least one model to serve")
        self._models = {model.name: model for model in models}
        if len(self._models) != len(models):
            raise InvalidInputError("two served models have the same name; give each model once")
        self.default = models[0].name
        self._samples: dict[str, torch.Tensor] = {}

    def names(self) -> list[str]:
        """The served model names, the default first."""
        return list(self._models)

    def get(self, name: str | None) -> LoadedModel:
        """The served model ``name`` (None: the default).

        Raises
        ------
        RequestRejectedError
            400 for a name that is not served; nothing is ever opened from a request.
        """
        key = self.default if name is None or name == "" else name
        model = self._models.get(key)
        if model is None:
            raise RequestRejectedError(
                400,
                "unknown_model",
                f"model {str(name)[:80]!r} is not served here; choose one of "
                f"{', '.join(self._models)} (GET /api/models)",
            )
        return model

    def sample_input(self, model: LoadedModel) -> torch.Tensor:
        """A blank input of the model's size (for layer tables), as ``salience layers`` probes
        it (:func:`~salience.models.loader.probe_input`): the shape a scan's or signal's model
        declares, else an image of its preset's size; a row of features for a model whose first
        layer is linear and which takes no image (a table's model)."""
        if model.name not in self._samples:
            self._samples[model.name] = _blank_input(model)
        return self._samples[model.name]


def _blank_input(model: LoadedModel) -> torch.Tensor:
    from salience.models.loader import declared_input_shape, input_width, probe_input

    declared = declared_input_shape(model.adapter)
    if declared is not None and all(d is not None for d in declared[1:]):
        return torch.zeros(1, *(int(d) for d in declared[1:]))  # type: ignore[arg-type]
    sample = probe_input(model.adapter, model.preset)
    if sample.ndim == 4:  # an image, of the size the page shows it at
        height, side = _input_size(model)
        sample = torch.zeros(1, model.preset.channels, height, side)
    width = input_width(model.adapter)
    if width is None or sample.ndim == 2:
        return sample
    try:
        model.adapter.forward(sample)
    except RuntimeError:  # a table's model: an image does not fit its first linear layer
        return torch.zeros(1, width)
    return sample


def _input_size(model: LoadedModel) -> tuple[int, int]:
    crop = model.preset.crop
    if isinstance(crop, tuple):
        return int(crop[0]), int(crop[1])
    side = model.preset.resize_shorter or 224
    return side, side


def model_summary(model: LoadedModel, default: bool) -> dict[str, Any]:
    """What the page shows about a model."""
    height, width = _input_size(model)
    return {
        "name": model.name,
        "default": default,
        "classes": len(model.class_names),
        "input_size": [height, width],
        "differentiable": isinstance(model.adapter, DifferentiableAdapter),
    }


def method_catalog() -> list[dict[str, Any]]:
    """Every registered method with its family, paper, whether it runs many passes, and the
    options a request may set for it (name, form field, type, default, bounds, help)."""
    from salience.methods.base import EXPLAINER
    from salience.methods.cam import CAMExplainer
    from salience.methods.options import options_of
    from salience.registry import available, get

    catalog = []
    for name in available(EXPLAINER, sort=False):
        method = get(EXPLAINER, name)
        doc = (method.__doc__ or "").strip().splitlines()
        catalog.append(
            {
                "name": name,
                "description": doc[0] if doc else "",
                "paper": method.paper,
                "needs_gradients": bool(method.needs_gradients),
                "cam": issubclass(method, CAMExplainer),
                "slow": not method.single_pass,
                "options": [
                    option.describe() for option in options_of(method).values() if option.flag
                ],
            }
        )
    return catalog


def layer_catalog(pool: ModelPool, model: LoadedModel) -> dict[str, Any]:
    """A model's layers with their output shapes, and the layer CAMs use by default."""
    from salience.adapters.layers import LayerError

    adapter = model.adapter
    if not isinstance(adapter, LayerAccessAdapter):
        return {"model": model.name, "default": None, "layers": []}
    sample = pool.sample_input(model)
    try:
        default = adapter.resolve_layer(None, sample)
    except LayerError:
        default = None
    layers = [
        {
            "name": info.name,
            "kind": info.kind,
            "shape": list(info.shape[1:]) if info.shape is not None else None,
            "spatial": bool(info.spatial),
        }
        for info in adapter.layer_table(sample)
    ]
    return {"model": model.name, "default": default, "layers": layers}


def predictions(model: LoadedModel, image: PreparedImage, k: int = PREDICTIONS) -> list[dict]:
    """The model's prediction for one prepared image in its outputs' terms
    (:meth:`~salience.models.options.LoadedModel.summary`): its ``k`` most probable classes or
    labels, the two sides of a binary output, or its values (``probability`` None)."""
    return prediction_rows(model, image.tensor, k)[0]


def prediction_rows(
    model: LoadedModel, inputs: torch.Tensor, k: int = PREDICTIONS
) -> list[list[dict]]:
    """:func:`predictions` of each row of a batch ``inputs`` (an image, a scan, a signal, rows
    of a table), from one forward pass."""
    outputs = model.adapter.forward(inputs)
    rows = []
    for output in outputs:
        summary = model.summary(output, k)
        rows.append(
            [
                {
                    "index": line.index,
                    "name": line.name,
                    "probability": line.probability,
                    "logit": line.output,
                    "text": line.text(),
                    "kind": summary.kind,
                }
                for line in summary.top
            ]
        )
    return rows


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 image as PNG, in memory (as every overlay: :func:`salience.render.encode`)."""
    return encode(image)


def npy_bytes(array: np.ndarray) -> bytes:
    """Encode an array in NumPy's ``.npy`` format."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class RenderedMap:
    """One map, ready to serve: metadata plus its files.

    Attributes
    ----------
    meta : dict
        Method, target, score, shapes, the method's parameters and diagnostics.
    files : dict of str to (bytes, str)
        ``overlay.png`` (the server's rendering), ``map.npy`` (the method's raw map at its native
        resolution) and ``display.f32`` (the map normalized to [0, 1] on the view, float32
        little-endian, NaN outside the model's crop; the page colours it itself), with their
        media types. ``meta["display_range"]`` is the map's values, in its own units, at 0 and 1
        of ``display.f32`` (the page's colorbar numbers); ``meta["scale"]`` the server's colour
        scale (sign mode, colormap).
    """

    meta: dict[str, Any]
    files: dict[str, tuple[bytes, str]]


def map_meta(explanation: Any, target: int, probabilities: Mapping[int, float]) -> dict[str, Any]:
    """What the API says of map ``target`` of an explanation's first input: method, class,
    rank, score, probability, the method's parameters and diagnostics."""
    index = int(explanation.targets[0, target])
    names = explanation.target_names
    metadata = explanation.metadata()
    return {
        "method": explanation.method,
        "target": index,
        "target_name": names[0][target] if names else None,
        "rank": target,
        "score": float(explanation.scores[0, target]),
        "score_kind": explanation.score_kind,
        "probability": probabilities.get(index),
        "params": metadata["params"],
        "info": metadata["info"],
    }


def render(
    explanation: Any,
    target: int,
    view: View,
    display: DisplayOptions,
    probabilities: Mapping[int, float],
) -> RenderedMap:
    """Render map ``target`` of a one-image explanation for the page and the API.

    ``view`` is ``display.view(prepared)``, made once for every map of the image.
    """
    rendering = render_map(explanation, target, view, display)
    raw, on_view = rendering.raw, rendering.unclipped.astype("<f4", copy=False)
    units = postprocess.display_values(
        raw, reduce=display.reduce, percentile=None, smooth=display.smooth
    )
    meta = {
        **map_meta(explanation, target, probabilities),
        "native_shape": list(raw.shape),
        "display_shape": list(on_view.shape),
        "scale": {
            "sign": rendering.scale.sign,
            "cmap": rendering.scale.cmap,
            "low": rendering.scale.low,
            "high": rendering.scale.high,
            "label": rendering.scale.label,
        },
        "display_range": [float(units.min()), float(units.max())],
    }
    files = {
        "overlay.png": (rendering.png, "image/png"),
        "map.npy": (npy_bytes(raw.numpy().astype(np.float32)), "application/octet-stream"),
        "display.f32": (on_view.tobytes(), "application/octet-stream"),
    }
    return RenderedMap(meta, files)


def colormap_tables(names: Sequence[str] = SHOWN_COLORMAPS) -> dict[str, list[list[int]]]:
    """256-entry RGB tables of the colormaps the page offers (matplotlib's, via salience.viz)."""
    from salience import viz

    ramp = np.linspace(0.0, 1.0, 256)[None, :]
    return {name: viz.colorize(ramp, name, signed=False, rgba=False)[0].tolist() for name in names}


def diverging_colormaps(names: Sequence[str] = SHOWN_COLORMAPS) -> list[str]:
    """The diverging ones of the page's colormaps: on a magnitude only their upper half is used,
    so zero keeps their neutral middle colour (:attr:`salience.viz.ColorScale.half`)."""
    from salience import viz

    return [name for name in names if name in viz.DIVERGING_CMAPS]


def agreement_of(maps: Sequence[RenderedMap], top_fraction: float) -> dict[str, Any]:
    """Pairwise agreement (``salience.evaluation.agreement``) of the first map of each method.

    Raises
    ------
    RequestRejectedError
        400 with fewer than two methods; 501 where the evaluation module is not installed.
    """
    try:
        from salience.evaluation.agreement import agreement
    except ImportError:
        raise RequestRejectedError(
            501, "not_available", "this installation has no salience.evaluation.agreement"
        ) from None
    first = {}
    for rendered in maps:
        name = rendered.meta["method"]
        if name not in first:
            data = rendered.files["map.npy"][0]
            first[name] = torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
    if len(first) < 2:
        raise RequestRejectedError(
            400, "too_few_methods", "agreement compares the maps of at least 2 methods"
        )
    return agreement(first, top_fraction=top_fraction).to_dict()
