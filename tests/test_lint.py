"""Lint and types are part of the suite: ruff (the rules in pyproject.toml) and mypy (its strict-leaning
config)
on kb/ and ingest/ must report nothing, so the README's test command checks them too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return path


def test_ruff_reports_nothing() -> None:
    out = subprocess.run(
        [_tool("ruff"), "check", "kb", "ingest", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-4000:]


def test_mypy_reports_nothing() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "Success" in out.stdout
