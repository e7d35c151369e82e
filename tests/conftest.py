"""Shared fixtures: every test runs offline, with kb state in tmp_path, on real files.

* ``model_cache``: one ONNX export of the bundled model per test session (the export takes ~10 s).
* ``workspace``: a fresh copy of the sample workspace in ``data/``.
* ``indexed``: that copy, indexed once per module with the real model and a real Chroma (copied per test).
* ``FakeEmbedder``: a deterministic hashing embedder for fast unit tests that claim nothing about quality.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key in list(os.environ):
        if key.startswith("KB_") and key != "KB_MODEL_CACHE_DIR":
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(autouse=True)
def _shared_model_cache(monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> None:
    monkeypatch.setenv("KB_MODEL_CACHE_DIR", str(model_cache))


def copy_sample(dest: Path) -> Path:
    shutil.copytree(DATA, dest, ignore=shutil.ignore_patterns(".kb"))
    return dest


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "ws")


@pytest.fixture(scope="session")
def _indexed_master(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    from kb import KnowledgeBase

    ws = copy_sample(tmp_path_factory.mktemp("indexed") / "ws")
    with KnowledgeBase.open(ws, model_cache_dir=model_cache) as kb:
        kb.index()
    return ws


@pytest.fixture
def indexed(tmp_path: Path, _indexed_master: Path) -> Path:
    """A private copy of the indexed sample workspace (index included)."""
    dest = tmp_path / "ws"
    shutil.copytree(_indexed_master, dest, symlinks=True)
    return dest


class FakeEmbedder:
    """Deterministic bag-of-words hashing vectors; counts what it embeds."""

    model_id = "fake-hash-embedder@1"
    dimensions = 64
    max_tokens = 256

    def __init__(self) -> None:
        self.calls: list[str] = []

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.extend(texts)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimensions] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.clip(norms, 1e-9, None)


class CountingEmbedder:
    """Wraps a real embedder and records every text sent to it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.extend(texts)
        return self.inner.embed(texts)  # type: ignore[attr-defined, no-any-return]


def verify_citation(root: Path, path: str, start: int, end: int, quote: str) -> bool:
    """True when ``quote`` really is at ``path`` lines ``start``-``end`` (whitespace-normalised)."""
    import re

    lines = re.split(r"\r\n|\n|\r", (root / path).read_text(encoding="utf-8"))
    window = " ".join(" ".join(lines[start - 1 : end]).split())
    return " ".join(quote.split()) in window
