"""The explanation request's form fields, and their check before any work starts.

Field names follow the ``salience explain`` flags (``samples``, ``steps``, ``masks``, ``layer``,
...): the method options' fields are made from their schemas (:mod:`salience.methods.options`),
like the flags. Every value is checked here, cheaply, so a bad request is refused at once with a
4xx error naming the field, before it waits for a worker.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import File, Form, UploadFile

from salience.adapters.base import LayerAccessAdapter
from salience.loading import LoadedModel
from salience.methods.convergence import AUTO
from salience.methods.options import Option, or_auto
from salience.server.limits import Limits, RequestRejectedError
from salience.server.service import VIEW_MAX_SIDE, DisplayOptions, ModelPool
from salience.server.watch import Watch, WatchedAdapter

MAX_METHODS = 20
FeaturesField = Annotated[
    str | None,
    Form(
        max_length=20_000,
        description="for a CSV of feature rows: the columns the model takes, in its order, "
        "comma-separated (default every numeric column)",
    ),
]
"""The form field naming a table's columns (``salience explain --features``)."""


@dataclass(frozen=True)
class ExplainForm:
    """The fields of ``POST /api/explain`` and ``POST /api/jobs``.

    ``options`` holds the method options by their keyword (``n_samples``), from the fields
    named after their ``salience explain`` flags (``samples``).
    """

    image: UploadFile
    model: str | None
    methods: list[str]
    target: str
    score: str
    options: dict[str, Any]
    reduce: str
    smooth: float
    percentile: float
    cmap: str
    alpha: float
    sign: str = "auto"
    features: str | None = None


def _fixed_form(
    *,
    image: Annotated[
        UploadFile,
        File(
            description="the image (PNG, JPEG, WebP, BMP, GIF or TIFF), or by its file name a "
            "scan (.nii, .nii.gz, .npy), a signal (.npy, .csv) or rows of features (.csv)"
        ),
    ],
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
    reduce: Annotated[str, Form(max_length=20, description="channel reduction")] = "abs_max",
    smooth: Annotated[float, Form(ge=0, le=50, description="Gaussian σ (pixels)")] = 0.0,
    percentile: Annotated[float, Form(gt=0, le=100, description="overlay clip")] = 99.0,
    cmap: Annotated[
        str,
        Form(
            max_length=40,
            description="overlay colormap; auto: RdBu_r for a signed map, jet for a magnitude",
        ),
    ] = "jet",
    alpha: Annotated[float, Form(ge=0, le=1, description="overlay opacity")] = 0.5,
    sign: Annotated[
        Literal["auto", "all", "absolute_value", "positive", "negative"],
        Form(description="how a map's sign is shown (auto: diverging for a map with both signs)"),
    ] = "auto",
    features: FeaturesField = None,
) -> None:
    """The fields that are not method options (only its signature is used)."""


def option_field(option: Option, methods: list[str]) -> inspect.Parameter:
    """The form field of a method option: its type, bounds (the server's cost limit as the
    upper one, where the option has one) and documentation, from the option's schema."""
    description = f"{option.help} ({', '.join(methods)})"
    if option.auto:  # a count or "auto", read as the flag reads it (_read_auto)
        annotation: Any = Annotated[str, Form(max_length=20, description=description)]
        default: Any = str(option.default)
    elif option.kind is bool:  # a switch to the opposite of the default, as the flag
        annotation = Annotated[bool, Form(description=description)]
        default = False
    elif option.choices:
        annotation = Annotated[Literal[option.choices], Form(description=description)]
        default = option.default
    elif option.kind in (int, float):
        bounds: dict[str, Any] = {}
        if option.low is not None:
            bounds["gt" if option.low_open else "ge"] = option.low
        high = option.request_max if option.request_max is not None else option.high
        if high is not None:
            bounds["le"] = high
        if option.kind is float:
            bounds["allow_inf_nan"] = False
        annotation = Annotated[option.kind, Form(description=description, **bounds)]
        default = option.default
    else:
        annotation = Annotated[str, Form(max_length=200, description=description)]
        default = option.default
    return inspect.Parameter(
        option.field, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


class _ExplainFormDependency:
    """The FastAPI dependency that reads an explanation request's form.

    Its signature, which FastAPI reads when an app is made, has the fixed fields and one field
    per method option with a flag (:func:`salience.methods.flagged_options`): a method
    registered before the app is made brings its options to the form.
    """

    @property
    def __signature__(self) -> inspect.Signature:
        fixed = list(inspect.signature(_fixed_form, eval_str=True).parameters.values())
        options = [option_field(option, methods) for option, methods in _flagged()]
        return inspect.Signature([*fixed, *options], return_annotation=ExplainForm)

    def __call__(self, **fields: Any) -> ExplainForm:
        options = {}
        for option, _ in _flagged():
            value = fields.pop(option.field)
            if option.kind is bool:
                value = (not option.default) if value else option.default
            elif option.auto:
                value = _read_auto(option, value)
            options[option.name] = value
        return ExplainForm(options=options, **fields)


def _read_auto(option: Option, text: str) -> Any:
    """A count or ``auto`` from its form field (read as the flag reads it), within the
    option's bounds and the server's cost limit (``request_max``); else a 422 naming the field."""
    try:
        value = or_auto(option.kind)(str(text))
    except ValueError:
        value = None
    if value == AUTO:
        return value
    high = option.request_max
    if value is not None and option.problem(value) is None and (high is None or value <= high):
        return value
    limit = f", at most {high:g} here" if high is not None else ""
    raise RequestRejectedError(
        422,
        "invalid_request",
        f"{option.field} must be auto or an integer {option.bounds_text()}{limit}; "
        f"got {str(text)[:40]!r}",
    )


def _flagged() -> list[tuple[Option, list[str]]]:
    from salience.methods import flagged_options

    return flagged_options()


explain_form = _ExplainFormDependency()
"""The form of an explanation request (FastAPI dependency: documents every field)."""


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
    values = dict(form.options)
    layer = values["layer"] = str(values.get("layer", "auto")).strip() or "auto"
    if layer != "auto" and isinstance(loaded.adapter, LayerAccessAdapter):
        loaded.adapter.resolve_layer(layer, pool.sample_input(loaded))  # unknown: LayerError
    display = DisplayOptions(  # an unknown reduction or colormap: InvalidInputError, 400
        reduce=form.reduce,
        percentile=form.percentile,
        smooth=form.smooth,
        cmap=None if form.cmap == "auto" else form.cmap,
        alpha=form.alpha,
        view_size=VIEW_MAX_SIDE,
        sign=form.sign,
    )
    watch = Watch(limits.time_limit)
    adapter = WatchedAdapter(loaded.adapter, watch)
    explainers = [make_explainer(adapter, name, **method_options(name, values)) for name in names]
    request = {
        "methods": names,
        "target": form.target,
        "score": form.score,
        "options": {key: value for key, value in values.items()},
        "display": {
            "reduce": form.reduce,
            "smooth": form.smooth,
            "percentile": form.percentile,
            "cmap": form.cmap,
            "alpha": form.alpha,
            "sign": form.sign,
        },
    }
    return {
        "explainers": explainers,
        "target": target,
        "score": form.score,
        "display": display,
        "watch": watch,
        "request": request,
    }
