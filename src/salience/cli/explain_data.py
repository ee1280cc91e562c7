"""``salience explain`` on scans and signals: the maps, their pictures and, for a scan, the map
as NIfTI in the scan's space.

``salience explain scan.nii.gz --model m.pt2`` writes, per method and target, ``scan_METHOD.npz``
and ``.json`` (the raw maps; the json stores the scan's geometry), ``scan_METHOD.png`` (the slice
montage through the map's peak) and ``scan_METHOD.nii.gz`` (the map at the scan's shape, with
its affine). A signal (``.csv``, or a 1-D/2-D ``.npy``) gets the ``.npz``/``.json`` and a ``.png``
of its traces with the saliency band beneath each.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salience.cli.arguments import (
    checked_target,
    method_names,
    method_values,
    open_model_from_args,
)
from salience.cli.reporting import about_image
from salience.errors import InvalidInputError
from salience.fileio import write_together

IMAGE, VOLUME, SIGNAL = "image", "volume", "signal"


def input_kind(name: str) -> str:
    """``"volume"`` for NIfTI and 3-D/4-D ``.npy``, ``"signal"`` for CSV and 1-D/2-D ``.npy``,
    else ``"image"``."""
    from salience.signals import is_signal_file
    from salience.volumes import is_volume_file

    if is_volume_file(name):
        return VOLUME
    if is_signal_file(name):
        return SIGNAL
    if name.lower().endswith(".npy") and Path(name).is_file():
        from salience.arrays import npy_header

        return SIGNAL if len(npy_header(name)[0]) <= 2 else VOLUME
    return IMAGE


def inputs_kind(names: Sequence[str]) -> str:
    """The one kind of all inputs named; a mix is refused."""
    kinds = {input_kind(name) for name in names} or {IMAGE}
    if len(kinds) > 1:
        raise InvalidInputError(
            f"the inputs mix {' and '.join(sorted(kinds))}s; explain each kind in its own call"
        )
    return kinds.pop()


def _label(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".npy", ".csv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "input"
    return Path(path).stem or "input"


def run_explain_data(args: argparse.Namespace, kind: str) -> int:
    """Explain every scan or signal named, writing each one's files together."""
    from salience.api import explain_all, make_explainer, method_options
    from salience.models.loader import declared_input_shape

    methods = method_names(args.method)
    loaded = open_model_from_args(args)
    adapter, names = loaded.adapter, loaded.class_names
    target = checked_target(args.target, loaded)
    values = method_values(args)
    explainers = [make_explainer(adapter, m, **method_options(m, values)) for m in methods]
    expected = declared_input_shape(adapter)
    output = Path(args.output)
    labels = [_label(path) for path in args.images]
    written = 0
    for path, label in zip(args.images, labels, strict=True):
        if labels.count(label) > 1:
            label = f"{label}-{written}"
        with about_image(label, finished=written, output=output):
            item = _load(path, kind)
            _check_fits(item, kind, expected, loaded.name)
            explanations = explain_all(
                adapter, item.tensor(), explainers, target=target, score=args.score
            )
            files: dict[str, bytes] = {}
            for method, explanation in explanations.items():
                explanation = explanation.with_names(names, model=loaded.name)
                explanation = explanation.with_geometry(item.geometry())
                _encode(explanation, item, kind, f"{label}_{method}", args, files)
            write_together(output, files)
            classes = ", ".join(
                " ".join(row) for row in (explanations[methods[0]].target_names or [])
            ) or ", ".join(str(t) for t in explanations[methods[0]].targets[0].tolist())
            if not args.quiet:
                print(f"{label}: explained {classes} with {', '.join(methods)}")
        written += 1
    print(f"wrote {written * len(explainers)} explanations to {output}/")
    return 0


def _load(path: str, kind: str) -> Any:
    if kind == VOLUME:
        from salience.volumes import load_volume

        return load_volume(path)
    from salience.signals import load_signal

    return load_signal(path)


def _check_fits(item: Any, kind: str, expected: Any, model: str) -> None:
    if kind == VOLUME:
        from salience.volumes import check_fits
    else:
        from salience.signals import check_fits
    check_fits(item, expected, model)


def _encode(
    explanation: Any, item: Any, kind: str, stem: str, args: argparse.Namespace, files: dict
) -> None:
    """The raw maps and, per target, the picture (and for a scan the NIfTI map)."""
    from salience.viz import figure_png

    files[f"{stem}.npz"], files[f"{stem}.json"] = explanation.to_bytes()
    count = explanation.targets.shape[1]
    for k in range(count):
        suffix = explanation.figure_suffix(k)
        names = explanation.target_names
        title = f"{explanation.method}: {names[0][k] if names else explanation.targets[0, k]}"
        if kind == VOLUME:
            from salience.volumes import map_nifti_bytes, montage_figure, volume_map

            saliency = volume_map(explanation.map(0, k), item.shape, args.reduce)
            figure = montage_figure(item, saliency, alpha=args.alpha, cmap=args.cmap, title=title)
            files[f"{stem}{suffix}.nii.gz"] = map_nifti_bytes(saliency, item)
        else:
            from salience.signals import signal_figure, signal_map

            saliency = signal_map(explanation.map(0, k), item.length)
            figure = signal_figure(item, saliency, cmap=args.cmap, title=title)
        files[f"{stem}{suffix}.png"] = figure_png(figure)
