"""The README's promises: its Python example runs, its first commands are the real ones."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT

README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code, "README has a python example"
    shutil.copytree(DATA, tmp_path / "data", ignore=shutil.ignore_patterns(".kb"))
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "chunks indexed" in out and "projects/prds/notifications.md" in out and "7 sources" in out


def test_readme_opens_with_the_two_commands() -> None:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block and README.index("```bash") < 200
    first, second = block.group(1).strip().splitlines()
    assert "scripts/setup.sh" in first and "kb index" in first and "kb ask" in first
    assert "pytest" in second
    ci = (ROOT / ".ci/run").read_text()
    assert "scripts/setup.sh" in ci and "pytest" in ci
    assert ("--with-llm" in second) == ("--with-llm" in ci), "CI installs what the README's test command installs"
