"""Each method option is declared once (``salience.methods.options``): a method registered here,
with an option of its own, shows that option in the CLI help, ``/api/methods``, the HTTP form, the
batch job spec and ``explain``/``explain_all``, with its bounds enforced alike in all of them."""

from __future__ import annotations

import inspect
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import salience
from salience.cli import build_parser, method_values
from salience.errors import InvalidInputError
from salience.methods.base import EXPLAINER, GradientExplainer
from salience.methods.options import SEED, Option, options_of
from salience.registry import _REGISTRIES, available, get
from salience.runner import JobSpec

SHARPNESS = Option(
    "sharpness",
    float,
    2.0,
    "exponent of the throwaway map",
    flag="sharpness",
    low=0.5,
    high=8.0,
)
OUT_OF_BOUNDS = 9.5
BOUNDS_PROBLEM = "must be a number in [0.5, 8.0], got 9.5"


class Sharpened(GradientExplainer):
    """|gradient| to a power: a method that exists only in this test."""

    options = (SHARPNESS, SEED)

    def __init__(
        self, model: object, *, sharpness: float = SHARPNESS.default, seed: int | None = 0
    ) -> None:
        super().__init__(model)
        self.sharpness = SHARPNESS.check(sharpness)
        self.seed = SEED.check(seed)

    def params(self) -> dict[str, Any]:
        return {"sharpness": self.sharpness}

    def combine(self, x: Tensor, grad: Tensor) -> Tensor:
        return grad.abs() ** self.sharpness


@pytest.fixture
def sharpened(monkeypatch: pytest.MonkeyPatch) -> str:
    """``sharpened`` in the method registry for one test, gone afterwards."""
    available(EXPLAINER)  # the built-in methods first
    monkeypatch.setattr(Sharpened, "name", "sharpened")
    monkeypatch.setitem(_REGISTRIES[EXPLAINER], "sharpened", Sharpened)
    return "sharpened"


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def explain_help() -> str:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return commands.choices["explain"].format_help()


def test_the_new_option_is_in_the_cli_help_and_values(sharpened, capsys) -> None:
    text = " ".join(explain_help().split())
    assert "--sharpness SHARPNESS exponent of the throwaway map (sharpened)" in text
    args = build_parser().parse_args(["explain", "--sharpness", "3.5"])
    assert method_values(args)["sharpness"] == 3.5
    assert method_values(build_parser().parse_args(["explain"]))["sharpness"] == 2.0
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["explain", "--sharpness", str(OUT_OF_BOUNDS)])
    assert stop.value.code == 2
    assert f"--sharpness: {BOUNDS_PROBLEM}" in capsys.readouterr().err


def test_the_cli_help_lists_the_methods_taking_a_shared_option(sharpened) -> None:
    """``seed`` is one declaration: the new method joins the methods listed under it."""
    text = " ".join(explain_help().split())
    assert "(smoothgrad, vargrad, rise, sharpened)" in text


def test_the_new_option_is_in_api_methods_and_the_form(sharpened) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx2")
    from fastapi.testclient import TestClient

    from salience.adapters.torch import TorchAdapter
    from salience.images import ImagePreset
    from salience.loading import LoadedModel
    from salience.server import create_app

    preset = ImagePreset(resize_shorter=16, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    model = LoadedModel(TorchAdapter(tiny_cnn()), "tiny", preset, ["a", "b", "c"])
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 120, dtype=np.uint8)).save(buffer, format="PNG")
    image = {"image": ("photo.png", buffer.getvalue(), "image/png")}
    with TestClient(create_app([model], workers=1)) as client:
        methods = {m["name"]: m for m in client.get("/api/methods").json()}
        listed = {option["name"]: option for option in methods["sharpened"]["options"]}
        assert set(listed) == {"sharpness", "seed"}
        assert listed["sharpness"] == {**SHARPNESS.describe(), "default": 2.0, "high": 8.0}
        assert listed["sharpness"]["field"] == "sharpness"
        assert listed["sharpness"]["low"] == 0.5 and listed["sharpness"]["type"] == "float"
        assert "sharpness" not in {o["name"] for o in methods["gradient"]["options"]}

        fields = {"methods": "sharpened", "sharpness": "3.5"}
        done = client.post("/api/explain", files=image, data=fields)
        assert done.status_code == 200, done.text
        assert done.json()["request"]["options"]["sharpness"] == 3.5
        refused = client.post(
            "/api/explain", files=image, data={**fields, "sharpness": str(OUT_OF_BOUNDS)}
        )
        assert refused.status_code == 422 and "sharpness" in refused.text
        assert refused.json()["kind"] == "invalid_request"


def test_the_job_spec_and_explain_and_explain_all_enforce_the_bounds_alike(sharpened) -> None:
    model, x = tiny_cnn(), torch.rand(1, 3, 8, 8)
    attempts = {
        "explain": lambda **o: salience.explain(model, x, method="sharpened", **o),
        "explain_all": lambda **o: salience.explain_all(model, x, ["sharpened", "gradient"], **o),
        "JobSpec": lambda **o: JobSpec(methods=("sharpened",), options=o),
    }
    for where, attempt in attempts.items():
        with pytest.raises(InvalidInputError) as error:
            attempt(sharpness=OUT_OF_BOUNDS)
        assert str(error.value) == f"sharpness {BOUNDS_PROBLEM}", where
        with pytest.raises(InvalidInputError, match="did you mean sharpness"):
            attempt(sharpnes=3.0)
    assert JobSpec(methods=("sharpened",), options={"sharpness": 3.0}).options == {"sharpness": 3.0}
    maps = salience.explain_all(model, x, ["sharpened", "gradient"], sharpness=3.0)
    assert maps["sharpened"].params == {"sharpness": 3.0}
    assert maps["gradient"].params == {"absolute": False}  # not given to a method without it


def test_a_misspelled_option_fails_alike_in_explain_and_explain_all() -> None:
    """explain_all used to drop an option that no method took; now it fails as explain does."""
    model, x = tiny_cnn(), torch.rand(1, 3, 8, 8)
    messages = []
    for call in (
        lambda: salience.explain(model, x, method="gradcam", layr="0"),
        lambda: salience.explain_all(model, x, ["gradcam"], layr="0"),
    ):
        with pytest.raises(InvalidInputError) as error:
            call()
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert "'layr'" in messages[0] and "did you mean layer?" in messages[0]
    with pytest.raises(InvalidInputError, match="did you mean n_samples"):
        salience.explain_all(model, x, ["gradient", "smoothgrad"], n_sample=4)
    with pytest.raises(InvalidInputError, match="did you mean n_samples"):
        salience.explain(model, x, method="smoothgrad", n_sample=4)


def test_a_spec_takes_options_of_other_methods_but_no_misspelling() -> None:
    """The CLI hands every flag's value to a job; an option no method has is refused."""
    assert JobSpec(methods=("gradient",), options={"n_samples": 4}).options == {"n_samples": 4}
    with pytest.raises(InvalidInputError, match="any method takes no option 'n_sample'"):
        JobSpec(methods=("gradient",), options={"n_sample": 4})


@pytest.mark.parametrize("method", sorted(available(EXPLAINER)))
def test_each_methods_schema_is_its_init(method: str) -> None:
    """The schema names exactly the keyword options of the method's ``__init__`` (its own and
    its parents'), with the same defaults."""
    cls = get(EXPLAINER, method)
    keywords: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                keywords[parameter.name] = parameter.default
    schema = options_of(cls)
    assert set(schema) == set(keywords)
    for name, option in schema.items():
        assert option.default == keywords[name], name


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0, "must be an integer >= 1, got 0"),
        (2.5, "must be an integer, got 2.5"),
        (True, "must be an integer, got True"),
        (3, None),
    ],
)
def test_an_int_option_checks_its_type_and_bound(value: object, problem: str | None) -> None:
    from salience.methods.noise import N_SAMPLES

    assert N_SAMPLES.problem(value) == problem


def test_open_and_infinite_bounds() -> None:
    from salience.methods.perturbation import KEEP

    assert KEEP.problem(0.0) == "must be a number in (0, 1], got 0.0"
    assert KEEP.problem(1.0) is None
    assert SHARPNESS.problem(float("nan")) == "must be a number in [0.5, 8.0], got nan"
    assert SEED.problem(None) is None and SEED.problem(-1) == "must be an integer >= 0, got -1"


@pytest.mark.slow
def test_the_page_renders_the_new_option_and_sends_it(sharpened, tmp_path) -> None:
    """The viewer builds its option controls from /api/methods (Chromium, as test_server_page)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("selenium")
    import json
    import urllib.request

    from conftest import browser_session
    from salience.adapters.torch import TorchAdapter
    from salience.images import ImagePreset
    from salience.loading import LoadedModel
    from salience.server import create_app
    from salience.server.background import serving
    from salience.server.browser import ViewerPage

    preset = ImagePreset(resize_shorter=16, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    model = LoadedModel(TorchAdapter(tiny_cnn()), "tiny", preset, ["a", "b", "c"])
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)).save(photo)
    controls = (
        "return [...document.querySelectorAll('#options input, #options select')].map("
        "(c) => [c.id, c.type, c.min, c.max, c.value])"
    )
    sessions = browser_session()
    driver = next(sessions)
    try:
        with serving(create_app([model], workers=1)) as url:
            page = ViewerPage(driver, url)
            page.open()
            shown = {c[0]: c[1:] for c in driver.execute_script(controls)}
            assert shown["sharpness"] == ["number", "0.5", "8", "2"]
            assert shown["samples"] == ["number", "1", "500", "50"]  # the server's cost limit
            assert shown["keep_negative"][0] == "checkbox"
            assert shown["baseline"][0] == shown["layer"][0] == "select-one"
            page.upload(photo)
            page._find("details summary").click()  # the options sit in a folded section
            field = page._find("#sharpness")
            field.clear()
            field.send_keys("3.5")
            page.choose_methods(["sharpened"])
            page.explain()
            page.wait_for_maps(1)
            job = driver.execute_script("return state.job")
            with urllib.request.urlopen(f"{url}/api/jobs/{job}") as response:
                request = json.load(response)["request"]
            assert request["methods"] == ["sharpened"]
            assert request["options"]["sharpness"] == 3.5
    finally:
        sessions.close()
