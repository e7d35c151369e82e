"""Freshness for ``kb mcp``: every request goes to the process that owns the workspace's index.

When a ``kb watch`` or ``kb serve`` owns the workspace, ``kb mcp`` is its client (one owner of the index,
which keeps it equal to the files). Otherwise ``kb mcp`` runs a :class:`kb.serve.watcher.Watcher` of its own
in a background thread for as long as it runs, serving the watcher's socket too, so other ``kb`` commands
route to it. Either way a request is answered over that socket, on a fresh connection, by an owner whose
start-up reconcile is done: an agent never reads a stale index. If the other owner stops, the next request
starts a watcher here; if another process wins that race, its watcher answers.

A thread, not a child ``kb watch`` process: on two shared cores a child (started before the MCP SDK import, to
overlap the two start-ups) made the first answer slower, 19.6 s against 14.3 s median under load 14 (the
start-ups are CPU-bound, the extra interpreter is extra work); it also stops with this process, by design.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from kb.errors import IndexLockedError, KbError
from kb.models import Answer, Hit, IndexReport, OnToken, Progress, Status
from kb.serve.client import Remote, connect
from kb.workspace import Workspace

if TYPE_CHECKING:
    from kb.answer.query import Query
    from kb.index.engine import IndexEngine

log = logging.getLogger(__name__)
T = TypeVar("T")

READY_TIMEOUT = 120.0  # seconds a request waits for the first reconcile of a watcher started here
OpenIndex = Callable[[], "tuple[IndexEngine, Query]"]


class OwnedIndex:
    """A :class:`kb.service.Service` whose verbs go to the owner of ``workspace``'s index (see module doc).

    ``open_index`` opens the index in this process (``(engine, query)``) when a watcher must be started here;
    ``watch_options`` go to :class:`kb.serve.watcher.Watcher`.
    """

    streams_tokens = False  # answers come over the owner's socket: verified, not streamed

    def __init__(
        self,
        workspace: Workspace,
        open_index: OpenIndex,
        *,
        ready_timeout: float = READY_TIMEOUT,
        **watch_options: Any,
    ):
        self.workspace = workspace
        self.open_index = open_index
        self.ready_timeout = ready_timeout
        self.watch_options = watch_options
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._started_at = 0.0

    # --- the owner ----------------------------------------------------------------------------------------
    @property
    def watching(self) -> bool:
        """Whether this process runs the workspace's watcher (else it is the client of another owner)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start a watcher here unless another process owns the index (called once, at start-up)."""
        owner = connect(self.workspace)
        if owner is not None:
            log.info("kb mcp: using the kb process %d that owns %s", owner.pid, self.workspace.root)
            owner.close()
            return
        self._start_watcher()

    def _start_watcher(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._ready.clear()
            self._failure = None
            self._started_at = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="kb-mcp-watcher", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        engine = None
        try:
            from kb.serve.watcher import Watcher  # the index stack: only when this process owns the index

            engine, query = self.open_index()
            watcher = Watcher(engine, query, **self.watch_options)
            threading.Thread(target=self._signal_ready, args=(watcher,), daemon=True).start()
            watcher.run(self._stop)
        except BaseException as exc:  # reported to the requests waiting for it
            self._failure = exc
            if not isinstance(exc, IndexLockedError):
                log.error("kb mcp: the watcher stopped: %s", exc, exc_info=not isinstance(exc, KbError))
        finally:
            self._ready.set()  # wake the waiters: they see the failure, or reach the next owner
            if engine is not None:
                engine.close()

    def _signal_ready(self, watcher: Any) -> None:
        while not self._stop.is_set() and not watcher.ready.wait(0.05):
            if self._thread is None or not self._thread.is_alive():
                return
        self._ready.set()

    def _wait_starting(self) -> None:
        """Block while a watcher started here is still on its first reconcile (its answers would be stale)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        if not self._ready.wait(self.ready_timeout):
            waited = time.monotonic() - self._started_at
            raise KbError(
                f"kb is still indexing {self.workspace.root} (started {waited:.0f} s ago); "
                "try again in a minute."
            )

    def _owner(self) -> Remote:
        """A connection to the owner of the index; a watcher is started here when nobody owns it."""
        for attempt in range(2):
            self._wait_starting()
            owner = connect(self.workspace)
            if owner is not None:
                return owner
            if self._stop.is_set() or attempt:
                break
            log.info("kb mcp: nobody owns %s; starting a watcher here", self.workspace.root)
            self._start_watcher()
        why = f": {self._failure}" if self._failure is not None else ""
        raise KbError(
            f"kb mcp could not watch {self.workspace.root}{why}. Fix that (kb status, kb index), or start "
            "kb watch there; kb mcp uses it."
        )

    def _call(self, verb: Callable[[Remote], T]) -> T:
        with self._owner() as owner:
            return verb(owner)

    def stop(self) -> None:
        """Stop the watcher started here, if any (its run in progress finishes first)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(130)

    # --- kb.service.Service -------------------------------------------------------------------------------
    def index(self, progress: Progress | None = None, *, rebuild: bool = False) -> IndexReport:
        return self._call(lambda o: o.index(rebuild=rebuild))  # the owner refuses a rebuild under it

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> list[Hit]:
        return self._call(lambda o: o.search(query, k, mode=mode, source_type=source_type, path=path))

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
        return self._call(
            lambda o: o.ask(
                question, persona=persona, k=k, mode=mode, source_type=source_type, path=path, llm=llm
            )
        )

    def status(self) -> Status:
        return self._call(lambda o: o.status())

    def close(self) -> None:
        self.stop()
