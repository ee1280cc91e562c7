"""The error hierarchy: what salience refuses is a ``SalienceError`` (and still the builtin its
callers catch), reported in one line by the command line and as a 4xx by the server; any other
error is a bug and keeps its traceback."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import salience
from salience import cli, errors
from salience.server.errors import classify

FACTORY = "model_factories:seeded_digits_net"
PACKAGE = Path(salience.__file__).parent

INTERNAL = {
    "salience.adapters.inference_copy.CopyError",
    "salience.adapters.program_store.UnnameableError",
    "salience.cli.batch.Terminated",
    "salience.cli.rows.TakesSignalsError",
}
"""Exception classes that never reach the user: their callers catch them and fall back."""

BUILTINS = {
    "salience.adapters.base.GradientsUnavailableError": TypeError,
    "salience.adapters.base.NonFiniteInputError": ValueError,
    "salience.adapters.base.NonFiniteOutputError": ValueError,
    "salience.adapters.layers.LayerError": LookupError,
    "salience.adapters.randomize.RandomizationError": ValueError,
    "salience.adapters.structured.OutputKeyError": LookupError,
    "salience.adapters.torch.ModelOutputError": TypeError,
    "salience.cli.reporting.CommandError": Exception,
    "salience.images.ImageLoadError": ValueError,
    "salience.arrays.ArrayFileError": ValueError,
    "salience.arrays.ArrayTooLargeError": ValueError,
    "salience.methods.masking.ChunkMemoryError": MemoryError,
    "salience.models.safety.UntrustedFileError": ValueError,
    "salience.registry.UnknownNameError": KeyError,
    "salience.runner.local.WorkerError": RuntimeError,
    "salience.server.limits.RequestRejectedError": ValueError,
    "salience.server.watch.TimeLimitExceededError": RuntimeError,
    "salience.server.watch.RequestCancelledError": RuntimeError,
    "salience.outputs.OutputKindError": ValueError,
    "salience.targets.TargetError": ValueError,
    "salience.errors.InvalidInputError": ValueError,
    "salience.errors.TooLargeError": ValueError,
    "salience.errors.UnsupportedError": TypeError,
    "salience.errors.NotFoundError": LookupError,
    "salience.errors.MissingFileError": FileNotFoundError,
    "salience.errors.MissingPackageError": ImportError,
}
"""Each exception class of salience, and the builtin that callers written before it catch."""

BUILTIN_RAISES = frozenset(
    {
        "ValueError",
        "TypeError",
        "LookupError",
        "KeyError",
        "IndexError",
        "FileNotFoundError",
        "ImportError",
        "ModuleNotFoundError",
    }
)

NOT_YET_CONVERTED: set[tuple[str, str | None]] = set()
"""(file, function or None for the whole file) that still raise bare builtins."""


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(salience.__path__, "salience."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_exception_class_of_salience_is_a_salience_error_and_its_old_builtin() -> None:
    classes = _exception_classes()
    assert set(classes) == set(BUILTINS) | INTERNAL | {"salience.errors.SalienceError"}
    for name, builtin in BUILTINS.items():
        assert issubclass(classes[name], errors.SalienceError), name
        assert issubclass(classes[name], builtin), name
    for name in INTERNAL:
        assert not issubclass(classes[name], errors.SalienceError), name


def _bare_raises(path: Path) -> list[tuple[str | None, int, str]]:
    """(enclosing top-level function, line, exception) of each ``raise <builtin>`` in a file."""
    found = []
    for top in ast.parse(path.read_text(encoding="utf-8")).body:
        function = top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef) else None
        for node in ast.walk(top):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(raised, ast.Name) and raised.id in BUILTIN_RAISES:
                found.append((function, node.lineno, raised.id))
    return found


def test_salience_raises_its_own_errors_not_bare_builtins() -> None:
    left: list[str] = []
    allowed_used: set[tuple[str, str | None]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for function, line, name in _bare_raises(path):
            for entry in ((relative, None), (relative, function)):
                if entry in NOT_YET_CONVERTED:
                    allowed_used.add(entry)
                    break
            else:
                left.append(f"{relative}:{line} raises a bare {name}")
    assert not left, "raise a salience.errors class instead:\n" + "\n".join(left)
    assert allowed_used == NOT_YET_CONVERTED, "converted: drop from the allow-list"


def _photo(folder: Path) -> str:
    path = folder / "dark.png"
    Image.fromarray(np.full((40, 48, 3), 20, np.uint8)).save(path)
    return str(path)


def _explain(tmp_path: Path) -> list[str]:
    return ["explain", _photo(tmp_path), "--model", FACTORY, "-o", str(tmp_path / "out")]


def _raising_in_salience(statement: str) -> object:
    """A function whose code is salience's own (its file is in the package) and runs
    ``statement``: an error raised by a ``raise`` in salience, as an internal check would."""
    namespace: dict[str, object] = {"errors": errors}
    source = f"def broken(*_args, **_kwargs):\n    {statement}\n"
    exec(compile(source, str(PACKAGE / "postprocess.py"), "exec"), namespace)
    return namespace["broken"]


@pytest.mark.parametrize(
    "statement, error",
    [
        ("raise KeyError('the cache lost its entry')", KeyError),
        ("raise ValueError('an invariant does not hold')", ValueError),
        ("1 / 0", ZeroDivisionError),
    ],
)
def test_an_internal_error_keeps_its_traceback(
    statement: str,
    error: type[Exception],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import salience.postprocess

    monkeypatch.setattr(salience.postprocess, "display_values", _raising_in_salience(statement))
    with pytest.raises(error) as info:
        cli.main([*_explain(tmp_path), "--size", "32", "--quiet"])
    assert "(while explaining dark)" in getattr(info.value, "__notes__", [])
    assert "salience: error:" not in capsys.readouterr().err


def test_a_salience_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import salience.postprocess

    broken = _raising_in_salience(
        "raise errors.InvalidInputError('the map is empty; give a map\\nsecond line')"
    )
    monkeypatch.setattr(salience.postprocess, "display_values", broken)
    status = cli.main([*_explain(tmp_path), "--size", "32", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert err == "salience: error: dark: the map is empty; give a map\n"


@pytest.mark.parametrize(
    "error, status, kind",
    [
        (errors.InvalidInputError("bad value"), 400, "bad_request"),
        (errors.NotFoundError("no such thing"), 400, "bad_request"),
        (errors.UnsupportedError("not a model"), 400, "bad_request"),
        (ValueError("an invariant does not hold"), 500, "internal"),
        (KeyError("lost"), 500, "internal"),
        (errors.MissingPackageError("install it"), 500, "internal"),
    ],
)
def test_the_server_answers_salience_errors_as_the_clients_and_others_as_its_own(
    error: Exception, status: int, kind: str
) -> None:
    answer = classify(error)
    assert (answer.status, answer.kind) == (status, kind)
