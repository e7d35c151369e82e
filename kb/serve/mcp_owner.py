"""Freshness for ``kb mcp``: every request goes to the process that owns the workspace's index.

When a ``kb watch`` or ``kb serve`` owns the workspace, ``kb mcp`` is its client (one owner of the index,
which keeps it equal to the files). Otherwise ``kb mcp`` runs a :class:`kb.serve.watcher.Watcher` of its own
for as long as it runs (in a forked child, see below), serving the watcher's socket too, so other ``kb``
commands route to it. Either way a request is answered over that socket, on a fresh connection, by an owner
whose start-up reconcile is done: an agent never reads a stale index. If the other owner stops, the next
request starts a watcher here; if another process wins that race, its watcher answers.

On Linux that watcher runs in a child forked at start-up, before the MCP SDK is imported: the two
start-ups are CPU-bound Python (the SDK's import here; chromadb's, the model and the first reconcile there),
so in one process they take turns on the GIL, and in two they run on two cores. ``benchmarks/bench_mcp.py``,
median of 5 starts, same machine and run conditions: first answer 1.08 s forked against 1.52 s in a thread
(0.240x against 0.319x the import of sentence-transformers). When every core is already busy (4 spinning
processes on 2 cores) the thread is ahead, 1.66 s against 1.94 s (median of 3). A fork, not a new ``kb watch``
process: it re-imports nothing (a fresh interpreter made the first answer slower under load, 19.6 s against
14.3 s at load 14). The child stops when this process ends, however it ends (it watches a pipe only this
process holds). Where ``fork`` is not safe (macOS, Windows), and after a forked watcher died, the watcher runs
in a thread here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
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
        self._child: Child | None = None

    # --- the owner ----------------------------------------------------------------------------------------
    @property
    def watching(self) -> bool:
        """Whether this process (or its forked child) runs the workspace's watcher (else it is the client of
        another owner)."""
        if self._child is not None and self._child.alive():
            return True
        return self._thread is not None and self._thread.is_alive()

    def start(self, fork: bool = False) -> None:
        """Start a watcher unless another process owns the index (called once, at start-up): in a forked
        child when ``fork`` and the platform allows it (call it before any other thread exists), else in a
        thread."""
        owner = connect(self.workspace)
        if owner is not None:
            log.info("kb mcp: using the kb process %d that owns %s", owner.pid, self.workspace.root)
            owner.close()
            return
        if fork and FORK_OK:
            self._child = Child.start(self._run_watcher)
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
        try:
            self._run_watcher(self._stop, self._ready.set)
        except BaseException as exc:  # reported to the requests waiting for it
            self._failure = exc
        finally:
            self._ready.set()  # wake the waiters: they see the failure, or reach the next owner

    def _run_watcher(self, stop: threading.Event, on_ready: Callable[[], object]) -> None:
        """Open the index and watch it until ``stop``; ``on_ready`` once its first reconcile is done."""
        engine = None
        done = threading.Event()
        try:
            from kb.serve.watcher import Watcher  # the index stack: only when this process owns the index

            engine, query = self.open_index()
            watcher = Watcher(engine, query, **self.watch_options)
            threading.Thread(target=signal_ready, args=(watcher.ready, done, on_ready), daemon=True).start()
            watcher.run(stop)
        except BaseException as exc:
            if not isinstance(exc, IndexLockedError):
                log.error("kb mcp: the watcher stopped: %s", exc, exc_info=not isinstance(exc, KbError))
            raise
        finally:
            done.set()
            if engine is not None:
                engine.close()

    def _wait_starting(self) -> None:
        """Block while a watcher started here is still on its first reconcile (its answers would be stale)."""
        child = self._child
        if child is not None and not child.ready.is_set():
            if not child.wait_ready(self.ready_timeout):
                waited = time.monotonic() - child.started_at
                raise KbError(
                    f"kb is still indexing {self.workspace.root} (started {waited:.0f} s ago); "
                    "try again in a minute."
                )
            if child.failure:
                self._failure = KbError(child.failure)
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
        """Stop the watcher started here or in the forked child, if any (its run in progress finishes
        first)."""
        self._stop.set()
        if self._child is not None:
            self._child.stop(130)
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


def signal_ready(ready: threading.Event, done: threading.Event, on_ready: Callable[[], object]) -> None:
    """Call ``on_ready`` once the watcher is ``ready`` (not when it is ``done`` before)."""
    while not ready.wait(0.05):
        if done.is_set():
            return
    on_ready()


FORK_OK = sys.platform.startswith("linux")  # macOS: system frameworks are not fork-safe; Windows has no fork
Watch = Callable[[threading.Event, Callable[[], object]], None]


class Child:
    """A forked process running ``watch(stop, on_ready)``; it stops when the pipe only its parent holds closes
    (the parent stopped it, exited or was killed), or on SIGTERM/SIGINT. Its stdin reads nothing and its
    stdout goes to stderr: the parent's stdio carries the MCP protocol."""

    def __init__(self, pid: int, keep_alive: int, status: int):
        self.pid, self.keep_alive, self.status = pid, keep_alive, status
        self.started_at = time.monotonic()
        self.ready = threading.Event()
        self.failure = ""
        self._lock = threading.Lock()  # one reader of the status pipe
        self._reaper = threading.Thread(target=os.waitpid, args=(pid, 0), name="kb-mcp-reaper", daemon=True)
        self._reaper.start()  # reaped the moment it exits: a zombie's pid would still look like an owner

    @classmethod
    def start(cls, watch: Watch) -> Child:
        alive_r, alive_w = os.pipe()
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(alive_w)
            os.close(status_r)
            serve_child(watch, alive_r, status_w)
        os.close(alive_r)
        os.close(status_w)
        return cls(pid, alive_w, status_r)

    def wait_ready(self, timeout: float) -> bool:
        """Wait for the child's first word: ready, or why it failed (it exited). False on timeout."""
        with self._lock:
            if not self.ready.is_set() and self.status >= 0:
                readable, _, _ = select.select([self.status], [], [], timeout)
                if not readable:
                    return False
                word = os.read(self.status, 65536).decode("utf-8", "replace")
                if word != "ready":
                    self.failure = word[1:] if word.startswith("!") else "the watcher process stopped"
                self.ready.set()
        return True

    def alive(self) -> bool:
        return self._reaper.is_alive()

    def stop(self, timeout: float) -> None:
        """Close the pipe (the child finishes its run in progress and exits); wait up to ``timeout`` s."""
        if self.keep_alive >= 0:
            os.close(self.keep_alive)
            self.keep_alive = -1
        self._reaper.join(timeout)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self._reaper.join()
        with self._lock:  # a request still waiting for the first word has it (EOF) by now
            if self.status >= 0:
                os.close(self.status)
                self.status = -1


def serve_child(watch: Watch, alive: int, status: int) -> None:
    """The forked child's life: the watcher until the parent goes; then exit (never returns)."""
    code = 0
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

        def parent_gone() -> None:
            with contextlib.suppress(OSError):
                os.read(alive, 1)  # EOF when the parent closed its end or died
            stop.set()

        threading.Thread(target=parent_gone, daemon=True).start()
        watch(stop, lambda: os.write(status, b"ready"))
    except BaseException as exc:
        code = 1
        with contextlib.suppress(OSError):
            os.write(status, f"!{exc}".encode()[:4096])
    finally:
        logging.shutdown()
        os._exit(code)
