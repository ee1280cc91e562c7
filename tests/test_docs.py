"""The Python examples in the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
def test_the_trust_guide_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = _python_blocks(DOCS / "trust.md")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/trust.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "gradient sensitive to the model" in printed
    assert "guided_backprop largely independent of the model" in printed
    assert "deletion AUC" in printed
    assert (tmp_path / "sanity-out" / "sanity_cascading.png").is_file()
