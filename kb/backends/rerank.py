"""Rerankers: an optional second retrieval stage (``reranker = "cross-encoder:<folder>"``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from kb.errors import ConfigError


class Reranker(Protocol):
    """A second stage that re-scores the fused candidates (e.g. a cross-encoder).

    Returns new scores, in the order of ``texts``."""

    def score(self, query: str, texts: Sequence[str]) -> Sequence[float]: ...


class CrossEncoderReranker:
    """A sentence-transformers cross-encoder from a local folder, as kb's reranker stage (``reranker =
    "cross-encoder:<folder>"``). Loaded lazily; imports torch, so it costs a few seconds at start-up."""

    def __init__(self, path: str):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f'Reranker model folder {folder} not found. Set reranker = "cross-encoder:<local folder>" '
                "to a downloaded sentence-transformers cross-encoder, or remove the setting."
            )
        self.path = folder
        self._model: Any = None

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if self._model is None:
            from sentence_transformers import CrossEncoder

            self._model = CrossEncoder(str(self.path), device="cpu")
        return [float(x) for x in self._model.predict([(query, t) for t in texts])]


def make_reranker(spec: str) -> CrossEncoderReranker:
    kind, _, arg = spec.partition(":")
    if kind != "cross-encoder" or not arg:
        raise ConfigError(f"Unknown reranker {spec!r}. Available: 'cross-encoder:<local model folder>'.")
    return CrossEncoderReranker(arg)
