"""The service interface: what a client of a knowledge base can rely on, local or remote.

It is implemented by :class:`kb.KnowledgeBase` (the library, in this process), :class:`kb.serve.client.Remote`
(the process that owns the index — ``kb watch`` or ``kb serve`` — reached over its socket),
:class:`kb.serve.remote_http.HttpRemote` (a ``kb serve`` over HTTP, anywhere) and, inside ``kb serve``,
:class:`kb.serve.http_owner.OwnerService`. The CLI is typed against this protocol only, so a command works the
same whichever it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kb.models import Answer, Hit, IndexReport, OnToken, Progress, Status
from kb.workspace import Workspace


class Service(Protocol):
    """search / ask / status / index over one workspace."""

    workspace: Workspace

    @property
    def streams_tokens(self) -> bool:
        """Whether :meth:`ask` calls ``on_token`` as a language model writes (not across a socket)."""
        ...

    def index(self, progress: Progress | None = None, *, rebuild: bool = False) -> IndexReport: ...

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> list[Hit]: ...

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
    ) -> Answer: ...

    def status(self) -> Status: ...

    def close(self) -> None: ...
