"""Pieces of ``kb watch`` that need no watchdog: the re-index record, the backoff while a backend is down,
the folders a glob watches, whether the workspace and its index folder are still there, and the start-up's
model load and warm-up.

(The targeted discovery the watcher runs on changed paths is :func:`ingest.discovery.discover_paths`.)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.discovery import glob_literal
from ingest.layout import WORKOS_DIR
from kb.errors import EmbedderError, StorageError, StoreUnavailableError, WorkspaceNotFoundError
from kb.models import IndexReport
from kb.workspace import Workspace

if TYPE_CHECKING:
    from kb.answer.query import Query
    from kb.backends.embedders import Embedder

log = logging.getLogger(__name__)

#: Errors after which ``kb watch`` keeps the changes and tries again (:class:`Outage`): a backend that does
#: not answer (the Chroma server, a remote embeddings server), not a problem with the files.
UNAVAILABLE = (StoreUnavailableError, EmbedderError)


@dataclasses.dataclass
class Reindexed:
    """One re-index: what the log line says, and what ``kb watch --json`` prints."""

    paths: list[tuple[str, str]]  # (action, path): added, updated, removed, renamed (a -> b)
    chunks_embedded: int
    ms: float
    reason: str

    @classmethod
    def of(cls, report: IndexReport, ms: float, reason: str) -> Reindexed | None:
        """The record of a run that changed something (None when it changed nothing)."""
        paths = (
            [("added", p) for p in report.added]
            + [("updated", p) for p in report.updated]
            + [("removed", p) for p in report.removed]
            + [("renamed", f"{a} -> {b}") for a, b in report.renamed]
        )
        if paths or report.chunks_embedded or report.repaired:
            return cls(paths, report.chunks_embedded, ms, reason)
        return None

    def line(self) -> str:
        shown = ", ".join(f"{a} {p}" for a, p in self.paths[:3])
        more = f" (+{len(self.paths) - 3} more)" if len(self.paths) > 3 else ""
        return f"{shown}{more} · {self.chunks_embedded} chunks embedded · {self.ms:.0f} ms"


def literal_dir(pattern: str) -> str:
    """The folder a glob's literal prefix names: ``.workos/context/**`` -> ``.workos/context``."""
    literal = glob_literal(pattern)
    return literal.rsplit("/", 1)[0] if "/" in literal else ""


@dataclasses.dataclass
class Outage:
    """A backend (the vector store, or a remote embeddings server) stopped answering: the changes wait and
    are tried again after ``first`` seconds, then twice as long each time, at most ``cap``."""

    first: float = 1.0
    cap: float = 30.0
    since: float | None = None  # wall clock: when it started
    delay: float = 0.0
    _next: float = 0.0  # monotonic: when to try again

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self) -> float:
        """Record a failed attempt; the seconds until the next one."""
        if self.since is None:
            self.since, self.delay = time.time(), self.first
        else:
            self.delay = min(self.delay * 2, self.cap)
        self._next = time.monotonic() + self.delay
        return self.delay

    def due(self) -> bool:
        return self.since is not None and time.monotonic() >= self._next

    def retry_at(self) -> float | None:
        """Wall-clock time of the next attempt (None when nothing is down)."""
        return None if self.since is None else time.time() + max(0.0, self._next - time.monotonic())

    def over(self) -> float | None:
        """It answers again: how long it was down (None when it was not)."""
        since, self.since = self.since, None
        return None if since is None else time.time() - since


def stamp(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of ``path``, or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class WorkspaceGuard:
    """What ``kb watch`` checks of its workspace as it runs: that the folder is the one it started in (its
    device and inode) and still holds its index folder, and whether kb.toml changed (settings are read
    once)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        st = os.stat(workspace.root)
        self.identity = (st.st_dev, st.st_ino)
        self.config = stamp(workspace.config_path)

    def check(self) -> str | None:
        """Raise why ``kb watch`` must stop if the workspace folder was moved or deleted, or its index folder
        deleted (the socket and the write lock went with it: another process could now open the index beside
        this one); else the warning to show when kb.toml changed since the last check."""
        root = self.workspace.root
        try:
            st = os.stat(root)
            same = (st.st_dev, st.st_ino) == self.identity and (root / WORKOS_DIR).is_dir()
        except OSError:
            same = False
        if not same:
            raise WorkspaceNotFoundError(
                f"The workspace folder {root} was moved or deleted while kb watch was running; kb watch "
                "stopped (nothing was half-written). Start it again where the workspace is now: "
                "kb watch --workspace NEW_PATH"
            )
        state = self.workspace.state_dir
        if not state.is_dir():
            raise StorageError(
                f"The index folder {state} was deleted while kb watch was running; kb watch "
                f"stopped. Start it again (it rebuilds the index): kb watch --workspace {root}"
            )
        config = stamp(self.workspace.config_path)
        if config == self.config:
            return None
        self.config = config
        return "kb.toml changed: restart kb watch to apply it (it still uses the settings it started with)"


def preload(embedder: Embedder) -> threading.Thread:
    """Load the embedding model in a background thread while the caller opens the vector store. ONNX Runtime
    builds its session in native code, without the GIL, so the two overlap: the first answer of ``kb mcp``
    came 0.2 s sooner (median of 8 starts; ``benchmarks/bench_mcp.py`` measures the whole start). The
    embedder's lock makes :func:`warm_up`'s question wait for it; a failure is reported again there."""

    def load() -> None:
        try:
            embedder.embed(["warm up"])
        except Exception as exc:  # the warm-up and the first request report it
            log.debug("model preload: %s", exc)

    thread = threading.Thread(target=load, name="kb-model-load", daemon=True)
    thread.start()
    return thread


def warm_up(reader: Query, lock: threading.Lock) -> None:
    """Open the index and answer one question (the persona choice and priorities get embedded and cached; the
    model, loading since :func:`preload`, is waited for) before the watcher says "ready", so the first request
    from another process is fast."""
    started = time.perf_counter()
    with lock:
        try:
            reader.engine.status(None)
            reader.ask("What should I consider first?", persona="auto")
        except Exception as exc:  # e.g. nothing indexed yet: the first request reports it
            log.debug("warm-up: %s", exc)
    log.debug("warm-up took %.1f s", time.perf_counter() - started)
