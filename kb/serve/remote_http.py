"""The client of a remote ``kb serve``: a :class:`kb.service.Service` over its HTTP API (httpx).

``KB_SERVER=http://host:port`` (or ``--server``) makes ``kb ask/search/status/index`` use it: the answers
are the server's, rendered by the CLI exactly as local ones, and a failure on the server comes back as the
same kb error class with the same exit code (the API's error body carries both). The token, when the server
needs one, is ``KB_SERVE_TOKEN``; it is only ever sent in the ``Authorization`` header, never printed.

Light: httpx and kb's result types, no index stack.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

import kb.errors as errors
from kb.models import (
    Answer,
    AnswerSentence,
    Citation,
    Hit,
    IndexReport,
    OnToken,
    Progress,
    SkippedFile,
    Status,
)
from kb.workspace import Workspace

TIMEOUTS = {"ask": 330.0, "index": 1830.0}  # seconds; a little over the server's own deadlines
DEFAULT_TIMEOUT = 70.0


def kb_error(data: Any, status: int) -> errors.KbError:
    """The API's error body as the kb error class it names (else KbError), with its exit code."""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return errors.KbError(f"kb serve answered HTTP {status} without an error message.")
    cls = getattr(errors, str(err.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.KbError)):
        cls = errors.KbError
    exc = cls(str(err.get("message") or f"kb serve answered HTTP {status}."))
    code = err.get("exit_code")
    if isinstance(code, int) and code != exc.exit_code:
        exc.exit_code = code
    return exc


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.ConfigError(
            f"KB_SERVER / --server must be an http(s) URL such as http://127.0.0.1:8765 (got {url!r})."
        )
    return url.rstrip("/")


class HttpRemote:
    """A remote ``kb serve`` as a :class:`kb.service.Service`; methods mirror :class:`kb.KnowledgeBase`."""

    streams_tokens = True  # a language model's draft streams from the server (server-sent events)

    def __init__(self, url: str, token: str | None = None, *, transport: httpx.BaseTransport | None = None):
        self.url = check_url(url)
        headers = {"Accept": "application/json", "User-Agent": "kb-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(base_url=self.url, headers=headers, transport=transport, trust_env=False)
        self._workspace: Workspace | None = None

    @property
    def workspace(self) -> Workspace:
        """The server's workspace (its path on the server's machine), asked for once when needed."""
        if self._workspace is None:
            from pathlib import Path

            self._workspace = Workspace(Path(self.status().workspace))
        return self._workspace

    @workspace.setter
    def workspace(self, value: Workspace) -> None:
        self._workspace = value

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; its JSON, or the server's error raised as its kb error class."""
        verb = path.rsplit("/", 1)[-1]
        timeout = TIMEOUTS.get(verb, DEFAULT_TIMEOUT)
        try:
            response = self._client.request(method, path, json=body, timeout=timeout)
        except httpx.TimeoutException:
            raise errors.KbError(
                f"kb serve at {self.url} did not answer in {timeout:g} s. Try again."
            ) from None
        except httpx.HTTPError as exc:
            raise errors.KbError(
                f"Cannot reach kb serve at {self.url} ({type(exc).__name__}). Is it running there? "
                "Check KB_SERVER / --server."
            ) from None
        return self._json(response)

    def _json(self, response: httpx.Response) -> Any:
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success and data is not None:
            return data
        if response.is_success:
            raise errors.KbError(f"kb serve at {self.url} sent a reply that is not JSON. Is it kb serve?")
        raise kb_error(data, response.status_code)

    # --- the verbs ----------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> list[Hit]:
        body = {"query": query, "k": k, "mode": mode, "type": _plain(source_type), "path": _plain(path)}
        data = self.request("POST", "/v1/search", {k: v for k, v in body.items() if v is not None})
        return [Hit.from_dict(h) for h in data["hits"]]

    def ask(
        self,
        question: str,
        *,
        persona: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
        llm: str | None = None,
        on_token: OnToken | None = None,
    ) -> Answer:
        if mode is not None or source_type or path:
            raise errors.BadRequest("kb ask through kb serve takes no --mode, --type or --path; drop them.")
        body = {"question": question, "persona": persona, "k": k, "llm": llm}
        body = {k: v for k, v in body.items() if v is not None}
        if on_token is None:
            return answer_from(self.request("POST", "/v1/ask", body))
        return answer_from(self._stream(body, on_token))

    def _stream(self, body: dict[str, Any], on_token: OnToken) -> Any:
        """``POST /v1/ask`` as server-sent events: drafts to ``on_token``, then the answer's JSON."""
        headers = {"Accept": "text/event-stream"}
        try:
            with self._client.stream(
                "POST", "/v1/ask", json={**body, "stream": True}, headers=headers, timeout=TIMEOUTS["ask"]
            ) as response:
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    response.read()
                    return self._json(response)
                return read_events(response.iter_lines(), on_token)
        except httpx.TimeoutException:
            raise errors.KbError(f"kb serve at {self.url} did not finish the answer in time.") from None
        except httpx.HTTPError as exc:
            raise errors.KbError(
                f"Lost the connection to kb serve at {self.url} ({type(exc).__name__})."
            ) from None

    def status(self) -> Status:
        return Status.from_dict(self.request("GET", "/v1/status"))

    def index(self, progress: Progress | None = None, *, rebuild: bool = False) -> IndexReport:
        if rebuild:  # the server is the index's one writer: a rebuild is run where it runs
            raise errors.BadRequest(
                f"kb serve at {self.url} owns that index: stop it, run kb index --rebuild where it runs, "
                "then start it again."
            )
        return report_from(self.request("POST", "/v1/index"))

    def read_source(self, path: str, start: int | None = None, end: int | None = None) -> Any:
        query = "&".join(f"{k}={v}" for k, v in (("start", start), ("end", end)) if v is not None)
        return self.request("GET", f"/v1/sources/{quote(path)}" + (f"?{query}" if query else ""))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpRemote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(lines: Any, on_token: Callable[[str], None]) -> Any:
    """The answer of a server-sent event stream (``draft`` events go to ``on_token``)."""
    event, data = "message", []
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line == "" and data:
            payload = json.loads("\n".join(data))
            if event == "draft":
                on_token(payload.get("text", ""))
            elif event == "answer":
                return payload
            elif event == "error":
                raise kb_error(payload, 500)
            event, data = "message", []
    raise errors.KbError("kb serve ended the answer stream before the answer. Try again.")


def _plain(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value) or None


def answer_from(data: dict[str, Any]) -> Answer:
    """An :class:`Answer` from ``kb ask --json`` output (what ``POST /v1/ask`` returns)."""
    nearest = [
        Hit(
            rank=i,
            text="",
            source_type="",
            **{k: h[k] for k in ("path", "start_line", "end_line", "heading", "score")},
        )
        for i, h in enumerate(data.get("nearest") or [], 1)
    ]
    return Answer(
        question=data["question"],
        persona=data.get("persona"),
        answer=data["answer"],
        abstained=bool(data["abstained"]),
        citations=[Citation.from_dict(c) for c in data.get("citations") or []],
        nearest=nearest,
        persona_title=data.get("persona_title"),
        backend=data.get("backend", "extractive"),
        sentences=[AnswerSentence.from_dict(s) for s in data.get("sentences") or []],
        persona_picked=bool(data.get("persona_picked")),
        stale=list(data.get("stale") or []),
        refreshed=list(data.get("refreshed") or []),
    )


def report_from(data: dict[str, Any]) -> IndexReport:
    """An :class:`IndexReport` from ``kb index --json`` output (what ``POST /v1/index`` returns)."""
    paths = data.get("paths") or {}
    return IndexReport(
        added=list(paths.get("added") or []),
        updated=list(paths.get("updated") or []),
        removed=list(paths.get("removed") or []),
        renamed=[(r["from"], r["to"]) for r in paths.get("renamed") or []],
        unchanged=int(data.get("unchanged", 0)),
        skipped=[SkippedFile.from_dict(s) for s in data.get("skipped") or []],
        chunks_embedded=int(data.get("chunks_embedded", 0)),
        chunks_total=int(data.get("chunks_total", 0)),
        seconds=float(data.get("seconds", 0.0)),
        rebuilt=bool(data.get("rebuilt")),
        repaired=list(data.get("repaired") or []),
    )
