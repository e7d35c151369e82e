"""``openai-compatible``: any OpenAI-compatible chat API over HTTP (Ollama, llama.cpp's server, vLLM,
LM Studio, hosted APIs), through httpx.

Streaming (server-sent events; a plain JSON completion is accepted too), timeouts, retries with backoff on
transient errors only (408, 425, 429, 5xx, timeouts, dropped connections) and never once tokens were shown,
and a one-line message saying what to fix for a refused connection, a bad key, an unknown model or a prompt
over the context window.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Iterator
from typing import Any

from kb.backends.generator import CONTEXT_OVERFLOW, Message
from kb.errors import GeneratorError
from kb.models import OnToken

log = logging.getLogger(__name__)

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


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
        if CONTEXT_OVERFLOW.search(detail):
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
