"""``openai-compatible:<model>``: embeddings from any ``/v1/embeddings`` server (text-embeddings-inference,
Ollama, vLLM, llama.cpp's server, hosted APIs), so a team can send its embedding work to a GPU box.

* **Batching**: ``batch_size`` texts per request (the indexer hands over that many at a time).
* **Retries** with exponential backoff (and the server's ``Retry-After``) on 408, 425, 429, 5xx, timeouts and
  dropped or refused connections; then one line saying what to fix. A bad key, an unknown model and a reply
  of the wrong shape are not retried.
* **Identity**: ``model_id`` is the spec, the base URL and the vectors' dimension, and it is part of the
  index fingerprint: pointing kb at another model (or another server) rebuilds the index instead of mixing
  vectors of two models.
* **Drift**: a server can swap the model behind a name. :meth:`OpenAIEmbedder.probe_vector` is the server's
  vector of a fixed text; the engine records it with the index and refuses to go on when it moves
  (:meth:`kb.index.engine.IndexEngine.check_embedder`).

Tokens are counted with the bundled all-MiniLM-L6-v2 tokenizer (WordPiece): chunk sizes stay within
``chunk_max_tokens`` as that tokenizer counts; keep ``chunk_max_tokens`` below the served model's window.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from kb.errors import EmbedderError

log = logging.getLogger(__name__)

PREFIX = "openai-compatible:"
PROBE_TEXT = "kb probe: cursor-based pagination keeps pages stable while new items arrive."
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 30.0


class _Transient(Exception):
    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.retry_after = retry_after


class OpenAIEmbedder:
    """``POST {base_url}/embeddings`` with ``{"model", "input": [...]}``; vectors L2-normalised."""

    max_tokens = 512

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        batch_size: int = 64,
        backoff: float = 0.5,
        counter: Any = None,
    ):
        if not model:
            raise EmbedderError("Name the model after 'openai-compatible:', e.g. openai-compatible:bge-m3.")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.batch_size = batch_size
        self._counter = counter
        self._client: Any = None
        self._probe: np.ndarray | None = None
        self.requests = 0  # HTTP requests sent (tests and benchmarks read it)

    # --- identity -----------------------------------------------------------------------------------------
    def probe_vector(self) -> np.ndarray:
        """The server's vector of :data:`PROBE_TEXT` (asked once per process)."""
        if self._probe is None:
            self._probe = self._embed_batch([PROBE_TEXT])[0]
        return self._probe

    @property
    def dimensions(self) -> int:
        return int(self.probe_vector().shape[0])

    @property
    def model_id(self) -> str:
        return f"{PREFIX}{self.model}@{self.base_url}#{self.dimensions}"

    # --- the Embedder protocol ----------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        if self._counter is None:
            from kb.backends.model_folder import ModelFolder
            from kb.settings import DEFAULT_EMBEDDER

            self._counter = ModelFolder(DEFAULT_EMBEDDER).tokenizer()
        return [len(e.ids) for e in self._counter.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        parts = [
            self._embed_batch(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)
        ]
        out = np.concatenate(parts)
        if self._probe is not None and out.shape[1] != self._probe.shape[0]:
            raise EmbedderError(
                f"The embeddings server at {self.base_url} changed the size of its vectors ({out.shape[1]} "
                f"instead of {self._probe.shape[0]}): it serves another model now. Rebuild with: kb index "
                "--rebuild, or point KB_EMBED_BASE_URL at the original model."
            )
        return out

    # --- HTTP ---------------------------------------------------------------------------------------------
    def _http(self) -> Any:
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                headers=headers,
                trust_env=False,
            )
        return self._client

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        import httpx

        attempt = 0
        while True:
            try:
                return self._post(texts)
            except _Transient as exc:
                error: _Transient = exc
            except httpx.TimeoutException:
                error = _Transient(f"no answer within {self.timeout:g} s")
            except httpx.TransportError as exc:
                error = _Transient(str(exc) or type(exc).__name__)
            if attempt >= self.retries:
                raise EmbedderError(
                    f"The embeddings server at {self.base_url} failed {attempt + 1} times ({error}). Check "
                    "it runs and serves /v1/embeddings, or point kb at another with KB_EMBED_BASE_URL "
                    "(embed_base_url in kb.toml); nothing was half-written."
                ) from None
            delay = self.backoff * 2**attempt * (1 + random.random() / 4)
            if error.retry_after is not None:
                delay = max(delay, min(error.retry_after, MAX_RETRY_AFTER))
            log.info("embeddings server %s: %s; retrying in %.1f s", self.base_url, error, delay)
            time.sleep(delay)
            attempt += 1

    def _post(self, texts: list[str]) -> np.ndarray:
        self.requests += 1
        r = self._http().post(
            f"{self.base_url}/embeddings",
            json={"model": self.model, "input": texts, "encoding_format": "float"},
        )
        if r.status_code in TRANSIENT_STATUS:
            after = r.headers.get("retry-after")
            try:
                wait = float(after) if after else None
            except ValueError:
                wait = None
            raise _Transient(f"HTTP {r.status_code}", wait)
        if r.status_code in (401, 403):
            hint = (
                "Set a valid key in KB_EMBED_API_KEY."
                if self.api_key
                else "It needs one: set KB_EMBED_API_KEY."
            )
            raise EmbedderError(
                f"The embeddings server at {self.base_url} refused the API key (HTTP {r.status_code}). {hint}"
            )
        if r.status_code >= 400:
            raise EmbedderError(
                f"The embeddings server at {self.base_url} refused to embed with model {self.model!r} (HTTP "
                f"{r.status_code}: {_detail(r.text)}). Check the model name after 'openai-compatible:' and "
                "KB_EMBED_BASE_URL."
            )
        try:
            data = sorted(r.json()["data"], key=lambda d: int(d.get("index", 0)))
            vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EmbedderError(
                f"The server at {self.base_url} did not answer like an OpenAI /v1/embeddings API: is "
                "KB_EMBED_BASE_URL right (it ends in /v1)?"
            ) from None
        if vectors.ndim != 2 or len(vectors) != len(texts) or vectors.shape[1] == 0:
            raise EmbedderError(
                f"The embeddings server at {self.base_url} returned {len(vectors)} vector(s) for "
                f"{len(texts)} texts; it does not follow the /v1/embeddings API."
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.clip(norms, 1e-12, None)  # type: ignore[no-any-return]


def _detail(body: str) -> str:
    """The error message of an OpenAI-style error body, else its first 200 characters."""
    import json

    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)[:200]
        if err:
            return str(err)[:200]
    except (ValueError, AttributeError):
        pass
    return " ".join(body.split())[:200]
