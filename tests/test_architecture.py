"""The layers of salience, and the one direction its imports go, read from the source with ast.

Every ``import`` counts, wherever it is written: at the top of a module, inside a function (a
lazy import runs as soon as the function does) or under ``TYPE_CHECKING`` (a type from a higher
layer is a dependency on it). A package importing its own modules is structure, not a
dependency. The table below is the one in ``docs/architecture.md``; a test keeps them equal.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import salience

FACADE = "salience"
#: Lowest first. A module may import modules of its own layer and of the layers below it.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": (
        "salience.errors",
        "salience.explanation",
        "salience.fileio",
        "salience.postprocess",
        "salience.registry",
        "salience.targets",
        "salience.outputs",
    ),
    "images": (
        "salience.arrays",
        "salience.images",
        "salience.modalities",
        "salience.render",
        "salience.signals",
        "salience.tabular",
        "salience.tabular_plots",
        "salience.viz",
        "salience.volumes",
    ),
    "adapters": ("salience.adapters",),
    "models": (
        "salience.loading",
        "salience.models",
        "salience.opening",
        "salience.presets",
        "salience.zoo",
    ),
    "methods": ("salience.methods",),
    "api": ("salience.api",),
    "evaluation": ("salience.evaluation",),
    "applications": ("salience.runner", "salience.server"),
    "cli": ("salience.cli",),
    # salience/__init__.py: the public names of the layers below, imported on first use
    "package": (FACADE,),
}
#: Imports that go up a layer on purpose, as (importer, imported), each with its reason.
ALLOWED_UPWARD: frozenset[tuple[str, str]] = frozenset(
    {
        # an Explanation draws itself in notebooks (overlay, show, _repr_png_) through the one
        # way a map is drawn; imported when called, and render never imports explanation
        ("salience.explanation", "salience.render"),
    }
)
DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def find_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package whose folder is ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement brings in: modules, or names in a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    stem = node.module or ""
    if node.level:
        parts = module.split(".")
        base = parts[: len(parts) - node.level + is_package]
        stem = ".".join(base + ([node.module] if node.module else []))
    return [f"{stem}.{alias.name}" for alias in node.names]


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, anywhere in its source."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(module, is_package, node):
                while name and name not in modules:  # a name in a module: that module
                    name = name.rpartition(".")[0]
                if name:
                    targets.add(name)
        graph[module] = {
            target
            for target in targets
            if target != module and not (is_package and target.startswith(module + "."))
        }
    return graph


def layer_of(module: str, layers: Mapping[str, Sequence[str]]) -> int | None:
    """The index of the layer that lists ``module`` or a package above it (the facade: itself)."""
    for index, members in enumerate(layers.values()):
        if any(module == m or (m != FACADE and module.startswith(m + ".")) for m in members):
            return index
    return None


def upward_imports(
    graph: Mapping[str, set[str]], layers: Mapping[str, Sequence[str]]
) -> list[tuple[str, str]]:
    """Every (importer, imported) pair whose imported module lies in a higher layer."""
    upward = []
    for module, targets in sorted(graph.items()):
        low = layer_of(module, layers)
        for target in sorted(targets):
            high = layer_of(target, layers)
            if low is not None and high is not None and high > low:
                upward.append((module, target))
    return upward


def a_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        return list(error.args[1])
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(find_modules(Path(salience.__file__).parent))


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycle = a_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_no_upward_import(graph: dict[str, set[str]]) -> None:
    found = upward_imports(graph, LAYERS)
    assert set(found) >= ALLOWED_UPWARD, "drop the allowances no longer needed"
    upward = [pair for pair in found if pair not in ALLOWED_UPWARD]
    assert not upward, "imports from a lower layer up: " + ", ".join(
        f"{low} -> {high}" for low, high in upward
    )


def test_the_runner_and_the_server_stand_apart(graph: dict[str, set[str]]) -> None:
    packages = ("salience.runner", "salience.server")
    crossing = [
        (module, target)
        for module, targets in graph.items()
        for target in targets
        for mine, other in (packages, packages[::-1])
        if module.startswith(mine) and target.startswith(other)
    ]
    assert not crossing, f"the two applications import each other: {crossing}"


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    homeless = [m for m in graph if layer_of(m, LAYERS) is None]
    assert not homeless, f"add these modules to LAYERS and to docs/architecture.md: {homeless}"


def test_the_document_shows_the_same_layers() -> None:
    rows = re.findall(r"^\| (\d+)\. (\w+) \| ([^|]*) \|", DOC.read_text(), flags=re.MULTILINE)
    documented = [
        (name, tuple(sorted(re.findall(r"`([\w.]+)`", cells)))) for _, name, cells in rows
    ]
    assert documented == [(name, tuple(sorted(members))) for name, members in LAYERS.items()]


def test_explaining_a_model_object_opens_nothing() -> None:
    """Paths and names are opened by salience.models, imported only for them (it brings the
    image and preset readers, which a model object does not need)."""
    script = (
        "import sys, torch, salience\n"
        "from torch import nn\n"
        "net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(18, 2))\n"
        "salience.explain(net, torch.rand(1, 3, 5, 5), method='gradient')\n"
        "print(sorted(m for m in ('salience.models', 'salience.images') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(salience.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_reader_sees_lazy_cycles_and_upward_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "from pkg import low, high\n",
        "low.py": "def f():\n    from . import high  # lazy, and up\n",
        "high.py": "from pkg.low import f\nimport pkg.sub.leaf\n",
        "sub/__init__.py": "from .leaf import x\n",
        "sub/leaf.py": "from ..low import f\nx = 1\n",
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    graph = import_graph(find_modules(package))
    assert graph == {
        "pkg": set(),
        "pkg.low": {"pkg.high"},
        "pkg.high": {"pkg.low", "pkg.sub.leaf"},
        "pkg.sub": set(),
        "pkg.sub.leaf": {"pkg.low"},
    }
    assert set(a_cycle(graph) or []) == {"pkg.low", "pkg.high"}
    layers = {"low": ("pkg.low", "pkg.sub"), "high": ("pkg.high",)}
    assert upward_imports(graph, layers) == [("pkg.low", "pkg.high")]
