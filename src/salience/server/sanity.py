"""``POST /api/sanity``: a short model-parameter randomization test of one image.

The full test re-explains the image once per block of the model (minutes for slow methods), so a
request is bounded: single-pass methods only (gradients and CAMs, one forward and one backward
each) and at most :data:`MAX_BLOCKS` blocks from the top, where the paper's finding shows first
(gradient and Grad-CAM decorrelate at once, guided backprop does not). ``salience sanity`` runs
the whole test.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import File, Form, UploadFile

from salience.images import PreparedImage
from salience.loading import LoadedModel
from salience.server.limits import RequestRejectedError

MAX_BLOCKS = 6
DEFAULT_METHODS = ["gradient", "guided_backprop", "gradcam"]


class SanityForm:
    """The fields of ``POST /api/sanity`` (a FastAPI dependency: documents every field)."""

    def __init__(
        self,
        image: Annotated[
            UploadFile, File(description="the image: PNG, JPEG, WebP, BMP, GIF or TIFF")
        ],
        methods: Annotated[
            list[str],
            Form(description="single-pass methods (gradients, CAMs), repeated or comma-separated"),
        ] = DEFAULT_METHODS,
        model: Annotated[str | None, Form(max_length=200, description="a served model")] = None,
        blocks: Annotated[
            int, Form(ge=1, le=MAX_BLOCKS, description="how many blocks, from the top")
        ] = 3,
        mode: Annotated[Literal["cascading", "independent"], Form()] = "cascading",
        seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    ) -> None:
        self.image = image
        self.methods = list(methods)
        self.model = model
        self.blocks = blocks
        self.mode = mode
        self.seed = seed


def check_methods(form: SanityForm) -> list[str]:
    """The requested methods, refused unless each takes one pass."""
    from salience.methods import method_names
    from salience.methods.base import EXPLAINER, SinglePassExplainer
    from salience.registry import get

    names = method_names(",".join(form.methods))
    slow = [name for name in names if not issubclass(get(EXPLAINER, name), SinglePassExplainer)]
    if slow or not names:
        raise RequestRejectedError(
            400,
            "bad_method",
            f"{', '.join(slow) or 'no method'}: a sanity request takes single-pass methods "
            "(gradients and CAMs); run `salience sanity` for the others",
        )
    return names


def run_sanity(form: SanityForm, names: list[str], loaded: LoadedModel, image: PreparedImage):
    """The randomization test of one image over the top ``form.blocks`` blocks, as JSON."""
    from salience.adapters.base import RandomizableAdapter
    from salience.evaluation.randomization import sanity_check

    adapter = loaded.adapter
    if not isinstance(adapter, RandomizableAdapter):
        raise RequestRejectedError(
            400,
            "not_randomizable",
            f"{loaded.name} is a black box: the sanity check re-initializes weights, which needs a "
            "PyTorch model",
        )
    units = adapter.randomization_units(image.tensor)[: form.blocks]
    result = sanity_check(
        adapter,
        image.tensor,
        names,
        mode=form.mode,
        layers=[unit.name for unit in units],
        seed=form.seed,
        class_names=loaded.class_names,
        progress=False,
    )
    summary: dict[str, Any] = result.to_dict()
    summary.pop("rows")  # one image: the means are the rows
    return {"model": loaded.name, **summary}
