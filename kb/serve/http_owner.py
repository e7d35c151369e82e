"""The :class:`kb.service.Service` that ``kb serve``'s HTTP side calls: the :class:`kb.serve.watcher.Watcher`
running in the same process, which owns the index.

Every verb goes through :meth:`Watcher.dispatch`, exactly the path a request on the watcher's Unix socket
takes (one reader at a time, ``index`` run by the watcher's own loop under its write lock), so the CLI on
the socket and HTTP clients share one owner and one order. Unlike the socket, a language model's tokens reach
``on_token`` here (the HTTP API streams them as server-sent events).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kb.errors import KbError
from kb.models import Answer, Hit, IndexReport, OnToken, Progress, Status
from kb.serve.watcher import Watcher
from kb.service import Service


class OwnerService:
    """search / ask / status / index answered by a running :class:`Watcher` of this process."""

    streams_tokens = True

    def __init__(self, watcher: Watcher):
        self.watcher = watcher
        self.workspace = watcher.engine.workspace

    def index(self, progress: Progress | None = None, *, rebuild: bool = False) -> IndexReport:
        if rebuild:  # the watcher is the index's one writer: a rebuild under it would race its runs
            raise KbError("kb serve owns this index: stop it, run kb index --rebuild, then start it again.")
        return IndexReport.from_dict(self.watcher.dispatch("index", {}))

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> list[Hit]:
        params = {"query": query, "k": k, "mode": mode, "source_type": source_type, "path": path}
        return [Hit.from_dict(h) for h in self.watcher.dispatch("search", params)["hits"]]

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
        params: dict[str, Any] = dict(
            question=question, persona=persona, k=k, mode=mode, source_type=source_type, path=path, llm=llm
        )
        if on_token is not None:
            params["on_token"] = on_token
        return Answer.from_dict(self.watcher.dispatch("ask", params))

    def status(self) -> Status:
        return Status.from_dict(self.watcher.dispatch("status", {}))

    def close(self) -> None:
        pass


class TokenTap:
    """A :class:`kb.service.Service` that hands ``on_token`` to every ``ask`` of ``inner`` (so the shared
    :class:`kb.serve.tools.Tools`, which has no streaming parameter, can stream)."""

    def __init__(self, inner: Service, on_token: OnToken):
        self.inner = inner
        self.workspace = inner.workspace
        self.on_token = on_token
        self.streams_tokens = True

    def index(self, progress: Progress | None = None, *, rebuild: bool = False) -> IndexReport:
        return self.inner.index(progress, rebuild=rebuild)

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> list[Hit]:
        return self.inner.search(query, k, mode=mode, source_type=source_type, path=path)

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
        return self.inner.ask(
            question,
            persona=persona,
            k=k,
            mode=mode,
            source_type=source_type,
            path=path,
            llm=llm,
            on_token=self.on_token,
        )

    def status(self) -> Status:
        return self.inner.status()

    def close(self) -> None:
        pass
