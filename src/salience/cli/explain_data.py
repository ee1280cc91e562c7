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

from salience.cli.arguments import (
    checked_target,
    method_names,
    method_values,
    open_model_from_args,
)
from salience.cli.reporting import about_image
from salience.errors import InvalidInputError
from salience.fileio import write_together
from salience.modalities import (
    IMAGE,
    check_data_fits,
    data_files,
    data_label,
    input_kind,
    load_data,
)


def inputs_kind(names: Sequence[str]) -> str:
    """The one kind of all inputs named; a mix is refused."""
    kinds = {input_kind(name) for name in names} or {IMAGE}
    if len(kinds) > 1:
        raise InvalidInputError(
            f"the inputs mix {' and '.join(sorted(kinds))}s; explain each kind in its own call"
        )
    return kinds.pop()


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
    labels = [data_label(path) for path in args.images]
    written = 0
    for path, label in zip(args.images, labels, strict=True):
        if labels.count(label) > 1:
            label = f"{label}-{written}"
        with about_image(label, finished=written, output=output):
            item = load_data(path, kind)
            check_data_fits(item, expected, loaded.name)
            explanations = explain_all(
                adapter, item.tensor(), explainers, target=target, score=args.score
            )
            files: dict[str, bytes] = {}
            for method, explanation in explanations.items():
                explanation = explanation.with_names(names, model=loaded.name)
                explanation = explanation.with_geometry(item.geometry())
                files.update(
                    data_files(
                        explanation,
                        item,
                        f"{label}_{method}",
                        reduce=args.reduce,
                        alpha=args.alpha,
                        cmap=args.cmap,
                    )
                )
            write_together(output, files)
            classes = ", ".join(
                " ".join(row) for row in (explanations[methods[0]].target_names or [])
            ) or ", ".join(str(t) for t in explanations[methods[0]].targets[0].tolist())
            if not args.quiet:
                print(f"{label}: explained {classes} with {', '.join(methods)}")
        written += 1
    print(f"wrote {written * len(explainers)} explanations to {output}/")
    return 0
