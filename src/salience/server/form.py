"""The explanation request's form fields, and their check before any work starts.

Field names follow the ``salience explain`` flags (``samples``, ``steps``, ``masks``, ``layer``,
...). Every value is checked here, cheaply, so a bad request is refused at once with a 4xx error
naming the field, before it waits for a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import File, Form, UploadFile

from salience.adapters.base import LayerAccessAdapter
from salience.loading import LoadedModel
from salience.server.limits import Limits, RequestRejectedError
from salience.server.service import VIEW_MAX_SIDE, DisplayOptions, ModelPool
from salience.server.watch import Watch, WatchedAdapter

MAX_METHODS = 20


@dataclass(frozen=True)
class ExplainForm:
    """The fields of ``POST /api/explain`` and ``POST /api/jobs``."""

    image: UploadFile
    model: str | None
    methods: list[str]
    target: str
    score: str
    samples: int
    noise: float
    steps: int
    baseline: str
    masks: int
    window: int
    stride: int
    layer: str
    keep_negative: bool
    seed: int
    reduce: str
    smooth: float
    percentile: float
    cmap: str
    alpha: float


def explain_form(
    image: Annotated[UploadFile, File(description="the image: PNG, JPEG, WebP, BMP or GIF")],
    methods: Annotated[
        list[str],
        Form(
            description="method names, repeated or comma-separated (GET /api/methods); "
            "'cams' for every CAM"
        ),
    ] = ["gradcam"],  # noqa: B006 - FastAPI copies defaults
    model: Annotated[str | None, Form(max_length=200, description="a served model")] = None,
    target: Annotated[
        str, Form(max_length=200, description="predicted | class INDEX | class NAME | top-K")
    ] = "predicted",
    score: Annotated[Literal["logit", "probability"], Form()] = "logit",
    samples: Annotated[int, Form(ge=1, le=500, description="SmoothGrad/VarGrad samples")] = 50,
    noise: Annotated[float, Form(gt=0, le=1, description="SmoothGrad σ / input range")] = 0.15,
    steps: Annotated[int, Form(ge=2, le=512, description="Integrated Gradients steps")] = 50,
    baseline: Annotated[Literal["zeros", "mean", "blur"], Form()] = "zeros",
    masks: Annotated[int, Form(ge=10, le=20_000, description="RISE masks")] = 4000,
    window: Annotated[int, Form(ge=1, le=256, description="occlusion window (pixels)")] = 16,
    stride: Annotated[int, Form(ge=1, le=256, description="occlusion stride (pixels)")] = 8,
    layer: Annotated[str, Form(max_length=200, description="CAM layer, or auto")] = "auto",
    keep_negative: Annotated[bool, Form(description="CAMs: no ReLU")] = False,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    reduce: Annotated[str, Form(max_length=20, description="channel reduction")] = "abs_max",
    smooth: Annotated[float, Form(ge=0, le=50, description="Gaussian σ (pixels)")] = 0.0,
    percentile: Annotated[float, Form(gt=0, le=100, description="overlay clip")] = 99.0,
    cmap: Annotated[str, Form(max_length=40, description="overlay colormap")] = "jet",
    alpha: Annotated[float, Form(ge=0, le=1, description="overlay opacity")] = 0.5,
) -> ExplainForm:
    """The form of an explanation request (FastAPI dependency: documents every field)."""
    return ExplainForm(
        image, model, methods, target, score, samples, noise, steps, baseline, masks, window,
        stride, layer, keep_negative, seed, reduce, smooth, percentile, cmap, alpha,
    )  # fmt: skip


def plan_request(
    form: ExplainForm, loaded: LoadedModel, pool: ModelPool, limits: Limits
) -> dict[str, Any]:
    """Check a request's fields and build its explainers; the keyword arguments of ``Job``.

    Raises
    ------
    RequestRejectedError, ValueError, LookupError
        For an unknown method, class or layer, a target out of range, a method the model cannot
        run, or an unknown colormap (all answered as 4xx).
    """
    from salience.api import make_explainer, method_options
    from salience.methods import method_names
    from salience.targets import TopK, check_target, parse_target

    names = method_names(",".join(form.methods))
    if not names:
        raise RequestRejectedError(400, "no_method", "name at least one method (GET /api/methods)")
    if len(names) > MAX_METHODS:
        raise RequestRejectedError(
            400, "too_many_methods", f"at most {MAX_METHODS} methods at once"
        )
    classes = len(loaded.class_names)
    target = parse_target(form.target, loaded.class_names)
    check_target(target, classes, model=loaded.name)  # out of range: TargetError, bad_target
    if isinstance(target, TopK) and target.k > limits.max_top_k:
        raise RequestRejectedError(
            400, "bad_target", f"top-{target.k} is more than the limit of top-{limits.max_top_k}"
        )
    layer = form.layer.strip() or "auto"
    if layer != "auto" and isinstance(loaded.adapter, LayerAccessAdapter):
        loaded.adapter.resolve_layer(layer, pool.sample_input(loaded))  # unknown: LayerError
    display = DisplayOptions(  # an unknown reduction or colormap: InvalidInputError, 400
        reduce=form.reduce,
        percentile=form.percentile,
        smooth=form.smooth,
        cmap=form.cmap,
        alpha=form.alpha,
        view_size=VIEW_MAX_SIDE,
    )
    watch = Watch(limits.time_limit)
    adapter = WatchedAdapter(loaded.adapter, watch)
    values = {
        "n_samples": form.samples, "noise": form.noise, "steps": form.steps,
        "baseline": form.baseline, "n_masks": form.masks, "window": form.window,
        "stride": form.stride, "layer": layer, "relu": not form.keep_negative, "seed": form.seed,
    }  # fmt: skip
    explainers = [make_explainer(adapter, name, **method_options(name, values)) for name in names]
    request = {
        "methods": names, "target": form.target, "score": form.score,
        "options": {key: value for key, value in values.items()},
        "display": {"reduce": form.reduce, "smooth": form.smooth, "percentile": form.percentile,
                    "cmap": form.cmap, "alpha": form.alpha},
    }  # fmt: skip
    return {
        "explainers": explainers, "target": target, "score": form.score, "display": display,
        "watch": watch, "request": request,
    }  # fmt: skip
