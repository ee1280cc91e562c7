"""The package surface: each public name listed once and importable, ``import salience`` cheap,
one copy of the error helpers, and the formatter left to lay out the code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import salience
from salience import errors

PACKAGE = Path(salience.__file__).parent
ROOT = PACKAGE.parents[1]

FORMAT_SKIP_ALLOWED: tuple[str, ...] = ()
"""Source still laid out by hand, left to be handed to the formatter when it is reorganised."""


def test_every_public_name_resolves_and_is_listed_once() -> None:
    names = [name for name in salience.__all__ if name != "__version__"]
    assert len(names) == len(set(names))
    assert {"SalienceError", "GradCAM", "explain", "load_model"} <= set(names)
    for name in names:
        value = getattr(salience, name)
        assert not isinstance(value, types.ModuleType), name
        assert getattr(value, "__name__", name) == name
    assert salience.SalienceError is errors.SalienceError


@pytest.mark.parametrize("name", ["adapters", "api", "errors", "methods", "models", "zoo"])
def test_submodules_are_attributes_but_not_star_exports(name: str) -> None:
    module = getattr(salience, name)
    assert isinstance(module, types.ModuleType) and module.__name__ == f"salience.{name}"
    assert name not in salience.__all__
    assert name in dir(salience)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'GradCan'"):
        _ = salience.GradCan


def test_import_salience_imports_neither_torch_nor_a_submodule() -> None:
    code = (
        "import sys, salience\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('salience.')))\n"
        "from salience import *\n"
        "print('torch' in sys.modules)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}  # this tree's salience
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=environment,
    )
    before, after = result.stdout.split()
    assert before == "[]"
    assert after == "True"  # the star import does load the names


def test_first_line_quotes_the_first_line_or_the_type() -> None:
    assert errors.first_line(ValueError("\n  bad size\nmore detail")) == "bad size"
    assert errors.first_line(KeyError()) == "KeyError"
    assert errors.first_line(RuntimeError("   ")) == "RuntimeError"


def _source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_writes_its_own_first_line() -> None:
    copies = []
    for path in _source_files():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in (
                "first_line",
                "_first_line",
                "_one_line",
            ):
                copies.append(f"{relative}:{node.lineno}")
    assert copies == []


def test_the_formatter_lays_out_the_code() -> None:
    marker = "fmt: " + "skip"
    folders = [PACKAGE, ROOT / "tests", ROOT / "bench"]
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(PACKAGE).as_posix() if folder == PACKAGE else ""
            if relative.startswith(FORMAT_SKIP_ALLOWED):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if marker in line:
                    found.append(f"{path.relative_to(ROOT)}:{number}")
    assert found == []


def test_the_adapters_share_one_batch_check() -> None:
    import torch

    from salience.adapters.base import check_batch
    from salience.adapters.torch import TorchAdapter

    adapter = TorchAdapter(torch.nn.Linear(3, 2))
    for check in (check_batch, adapter.prepare_input):
        with pytest.raises(TypeError, match=r"expected a torch\.Tensor input, got list"):
            check([1.0, 2.0])
        with pytest.raises(ValueError, match=r"N >= 1, got shape \(0, 3\)"):
            check(torch.zeros(0, 3))
        with pytest.raises(ValueError, match=r"N >= 1, got shape \(\)"):
            check(torch.tensor(1.0))
