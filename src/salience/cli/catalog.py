"""``salience models``, ``methods`` and ``layers``: what there is to explain with."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from salience.cli.arguments import open_model_from_args

if TYPE_CHECKING:
    from torch import Tensor


def run_models(_args: argparse.Namespace) -> int:
    """``salience models``."""
    from salience.registry import available
    from salience.zoo import MODEL, model_spec

    for name in available(MODEL):
        print(f"{name:<22} {model_spec(name).description}")
    return 0


def run_methods(_args: argparse.Namespace) -> int:
    """``salience methods``: name, one line of description, the paper."""
    from salience.methods.base import EXPLAINER
    from salience.registry import available, get

    for name in available(EXPLAINER):
        method = get(EXPLAINER, name)
        doc = (method.__doc__ or "").strip().splitlines()
        paper = f" [{method.paper}]" if method.paper else ""
        kind = "white-box" if method.needs_gradients else "black-box"
        print(f"{name:<22} {kind:<10} {doc[0] if doc else ''}{paper}")
    return 0


def run_layers(args: argparse.Namespace) -> int:
    """``salience layers``: the model's layers, their output shapes, the default CAM layer."""
    from salience.adapters.base import LayerAccessAdapter
    from salience.adapters.layers import LayerError

    loaded = open_model_from_args(args)
    adapter = loaded.adapter
    if not isinstance(adapter, LayerAccessAdapter):
        raise LayerError(f"{loaded.name} is a black box (ONNX): salience cannot see its layers")
    sample = layers_probe(loaded, args.input)
    try:
        default = adapter.resolve_layer(None, sample)
    except LayerError:
        default = None
    table = adapter.layer_table(sample)
    shape = "×".join(map(str, sample.shape))
    print(f"layers of {loaded.name} on a {shape} input (* = the CAM default):")
    for info in table:
        if not (args.all or info.spatial or info.name == default):
            continue
        shape = "×".join(map(str, info.shape[1:])) if info.shape is not None else "(not a tensor)"
        calls = f"  (called {info.calls}×)" if info.calls > 1 else ""
        mark = "*" if info.name == default else " "
        print(f"{mark} {info.name:<34} {info.kind:<20} {shape}{calls}")
    return 0


def layers_probe(loaded: Any, path: str | None = None) -> Tensor:
    """The input the layers are listed on: the file ``path`` (an image, scan or signal) when
    given; else the volume or signal the model was probed with when it opened
    (:func:`salience.models.loader.probe_input`); else the bundled sample image, prepared as the
    model's preset says."""
    from salience.modalities import IMAGE, check_data_fits, input_kind, load_data
    from salience.models.loader import declared_input_shape, probe_input

    if path is not None and input_kind(path) != IMAGE:
        item = load_data(path)
        check_data_fits(item, declared_input_shape(loaded.adapter), loaded.name)
        return item.tensor()
    if path is not None:
        return loaded.preset.prepare(path).tensor  # read with the image loader's own limits
    probe = probe_input(loaded.adapter, loaded.preset)
    if probe.ndim != 4:
        return probe
    from salience.zoo import DEFAULT_SAMPLE, SAMPLE_IMAGES

    return loaded.preset.prepare(SAMPLE_IMAGES[DEFAULT_SAMPLE]()).tensor
