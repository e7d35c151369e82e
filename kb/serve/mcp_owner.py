"""Freshness for ``kb mcp``: every request goes to the process that owns the workspace's index.

When a ``kb watch`` or ``kb serve`` owns the workspace, ``kb mcp`` is its client (one owner of the index,
which keeps it equal to the files). Otherwise ``kb mcp`` starts a ``kb watch`` of its own, as a child
process tied to it: the child serves the watcher's socket (so other ``kb`` commands route to it too), its log
lines go to ``kb mcp``'s stderr, and it stops when ``kb mcp`` stops — or dies: it reads the pipe ``kb mcp``
holds open on its stdin and stops cleanly when that closes. A child rather than a thread because the two
start-ups then run in parallel: ``kb mcp`` imports the MCP SDK while the child opens the index and loads the
model (a thread would share one interpreter lock), which cuts the time to the first answer by about 40 % on
two cores.

Either way a request is answered over the owner's socket, on a fresh connection, once the owner's start-up
reconcile is done: an agent never reads a stale index. If the other owner stops, the next request starts a
watcher here; if another process wins that race, its watcher answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from kb.errors import KbError
from kb.models import Answer, Hit, IndexReport, OnToken, Progress, Status
from kb.serve.client import Remote, connect
from kb.workspace import Workspace

log = logging.getLogger(__name__)
T = TypeVar("T")

READY_TIMEOUT = 120.0  # seconds a request waits for the first reconcile of a watcher started here
READY = "ready: watching"  # what kb watch logs once its start-up reconcile is done (README, Watching)

# The child's first lines: stop cleanly (SIGTERM, as Ctrl-C) when the parent's end of stdin closes, i.e. when
# kb mcp exits or is killed; then run what follows (by default, the kb command line).
ORPHAN_GUARD = """
import os, signal, sys, threading
def _parent_gone():
    while sys.stdin.buffer.read(65536):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=_parent_gone, daemon=True).start()
"""
KB_WATCH = ORPHAN_GUARD + "from kb.cli import main\nsys.argv[0] = 'kb'\nmain()\n"


def watch_command(
    workspace: Workspace, *, debounce: float = 0.1, polling: bool = False, resources: bool = True
) -> list[str]:
    """``kb watch`` for ``workspace`` as a child of this process (see :data:`ORPHAN_GUARD`)."""
    return [
        sys.executable,
        "-c",
        KB_WATCH,
        "watch",
        "--workspace",
        str(workspace.root),
        "--debounce",
        f"{debounce:g}",
        *(["--poll"] if polling else []),
        *([] if resources else ["--no-resources"]),
    ]


class OwnedIndex:
    """A :class:`kb.service.Service` whose verbs go to the owner of ``workspace``'s index (see module doc).

    ``command`` starts the watcher child (default :func:`watch_command`); it must log :data:`READY` on stderr
    once it serves, and stop on SIGTERM.
    """

    streams_tokens = False  # answers come over the owner's socket: verified, not streamed

    def __init__(
        self,
        workspace: Workspace,
        command: Sequence[str] | None = None,
        *,
        ready_timeout: float = READY_TIMEOUT,
    ):
        self.workspace = workspace
        self.command = list(command) if command is not None else watch_command(workspace)
        self.ready_timeout = ready_timeout
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._relay: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: str | None = None
        self._started_at = 0.0

    # --- the owner ----------------------------------------------------------------------------------------
    @property
    def watching(self) -> bool:
        """Whether a watcher started here is running (else this is the client of another owner)."""
        return self._child is not None and self._child.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid of the watcher started here, while it runs."""
        return self._child.pid if self._child is not None and self.watching else None

    def start(self) -> None:
        """Start a watcher here unless another process owns the index (called once, at start-up)."""
        owner = connect(self.workspace)
        if owner is not None:
            log.info("kb mcp: the kb process %d that owns %s answers", owner.pid, self.workspace.root)
            owner.close()
            return
        self._start_watcher()

    def _start_watcher(self) -> None:
        with self._lock:
            if self.watching or self._stopping.is_set():
                return
            self._ready.clear()
            self._failure = None
            self._started_at = time.monotonic()
            self._child = child = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=2,
                stderr=subprocess.PIPE,  # its stdout: our stderr
            )
            self._relay = threading.Thread(
                target=self._follow, args=(child,), name="kb-mcp-watcher-log", daemon=True
            )
            self._relay.start()
            log.info("kb mcp: started a watcher of %s (pid %d)", self.workspace.root, child.pid)

    def _follow(self, child: subprocess.Popen[bytes]) -> None:
        """Relay the child's log to stderr, noting when it is ready, and why it stopped."""
        assert child.stderr is not None
        error = ""
        for raw in child.stderr:
            with contextlib.suppress(OSError):
                os.write(2, raw)
            line = raw.decode("utf-8", "replace").strip()
            if READY in line:
                self._ready.set()
            elif line.startswith("error:"):  # kb's one line saying what went wrong
                error = line.removeprefix("error:").strip()
        code = child.wait()
        if not self._stopping.is_set():
            self._failure = f"its watcher stopped ({error or f'exit code {code}'})"
        self._ready.set()  # wake the waiters: they see the failure, or reach the next owner

    def _wait_starting(self) -> None:
        """Block while a watcher started here is still on its first reconcile (its answers would be stale)."""
        if not self.watching:
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
            if self._stopping.is_set() or attempt:
                break
            log.info("kb mcp: nobody owns %s; starting a watcher", self.workspace.root)
            self._start_watcher()
            if self._relay is not None:  # the child's exit is known once its log ends
                self._ready.wait(self.ready_timeout)
        why = f": {self._failure}" if self._failure else ""
        raise KbError(
            f"kb mcp could not watch {self.workspace.root}{why}. Fix that (kb status, kb index), or start "
            "kb watch there; kb mcp uses it."
        )

    def _call(self, verb: Callable[[Remote], T]) -> T:
        with self._owner() as owner:
            return verb(owner)

    def stop(self, timeout: float = 130.0) -> None:
        """Stop the watcher started here, if any: its run in progress finishes, the index stays whole."""
        self._stopping.set()
        child = self._child
        if child is None:
            return
        if child.poll() is None:
            with contextlib.suppress(OSError):
                child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("kb mcp: the watcher (pid %d) did not stop in %.0f s; killing it", child.pid, timeout)
            child.kill()
            child.wait()
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()
        if self._relay is not None:
            self._relay.join(10)

    # --- kb.service.Service -------------------------------------------------------------------------------
    def index(self, progress: Progress | None = None) -> IndexReport:
        return self._call(lambda o: o.index())

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
