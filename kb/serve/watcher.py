"""``kb watch``: keep the index equal to the files, and serve other processes meanwhile.

File-system events come from :mod:`kb.serve.events` (the only watchdog import). The design:

* **Disk is the truth.** Events only mark paths (or folders) dirty; after a quiet ``debounce`` (at most
  ``max_delay`` into a burst) the dirty paths are re-read from disk by the same indexer as ``kb index``,
  restricted to them (``IndexEngine.index(scope=...)``): one transaction, changed chunks embedded, renames
  and moves re-pathed with cached vectors. Duplicate, out-of-order or half-understood events (atomic saves,
  moves in and out of the tree, folder renames) cannot make it wrong: whatever happened, the path's current
  state is what gets indexed.
* **Never wrong for long.** On start, a full reconcile (``kb index``). An inotify queue overflow (watchdog
  only logs it) triggers a full rescan; a watch-limit error falls back to polling with a warning; every
  ``reconcile_every`` seconds a stat-only comparison of the tree with the manifest catches anything missed.
  When the vector store or a remote embedder stops answering, the changes are kept (``pending``) and tried
  again with backoff (:class:`kb.serve.support.Outage`): one full run applies them once it answers.
* **One owner.** The watcher holds the index's write lock for its lifetime and serves search/ask/status/index
  to other processes over a private Unix socket (:mod:`kb.serve.server`); ``kb status`` shows it.
* **Stops cleanly.** SIGINT/SIGTERM finish the run in progress and stop; SIGKILL loses only pending work,
  which the next start reconciles. A workspace or index folder moved or deleted stops it with a clear
  message."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest.discovery import discover_paths
from ingest.layout import DEFAULT_INCLUDE, PRUNED_DIRS
from kb.answer.query import Query
from kb.backends.embedders import LockedEmbedder
from kb.errors import IndexCorruptError, IndexLockedError, KbError
from kb.index.engine import IndexEngine
from kb.models import IndexReport, Status, WatcherStatus
from kb.serve.client import connect, save_watcher_status, socket_path
from kb.serve.dispatch import Dispatcher
from kb.serve.events import (
    EventHandler,
    OverflowSpy,
    WatchLimitError,
    make_observer,
    start_observer,
    watch_roots,
)
from kb.serve.server import WatchServer
from kb.serve.support import UNAVAILABLE, Outage, Reindexed, WorkspaceGuard, preload, warm_up

log = logging.getLogger(__name__)

FULL_RUN_ABOVE = 2000  # dirty paths beyond which one full run is cheaper than a targeted one


class Watcher:
    """Watches ``kb``'s workspace; :meth:`run` blocks until ``stop`` is set."""

    def __init__(
        self,
        engine: IndexEngine,
        query: Query | None = None,
        *,
        debounce: float = 0.1,
        max_delay: float = 1.0,
        reconcile_every: float = 30.0,
        poll_every: float = 2.0,
        polling: bool = False,
        serve: bool = True,
        on_reindex: Callable[[Reindexed], None] | None = None,
        observer_factory: Callable[[], Any] = make_observer,
    ):
        self.engine = engine
        self.query = query or Query(engine)
        self.shared_embedder = engine.share_embedder()
        self.root = engine.workspace.root
        self.debounce, self.max_delay = debounce, max_delay
        self.reconcile_every, self.poll_every = reconcile_every, poll_every
        self.mode = "polling" if polling else "inotify"
        self.serve = serve
        self.on_reindex = on_reindex or (lambda r: None)
        self.observer_factory = observer_factory
        self.include = DEFAULT_INCLUDE + engine.settings.include
        self.exclude = list(engine.settings.exclude)
        self.max_bytes = int(engine.settings.max_file_mb * 1024 * 1024)
        self._roots = watch_roots(self.include)
        self.started_at = time.time()
        self.last_event_at: float | None = None
        self.last_event: str | None = None
        self.last_error: str | None = None
        self.last_reindex_at: float | None = None
        self.reindexes = 0
        self._lock = threading.Lock()
        self._files: set[str] = set()
        self._dirs: set[str] = set()
        self._rescan: str | None = None
        self._wake = threading.Event()
        self.ready = threading.Event()  # set once the start-up reconcile is done
        self._last_mark = 0.0
        self._unloadable: dict[str, tuple[int, int]] = {}
        self._observer: Any = None
        self._server: WatchServer | None = None
        self.reader: Query | None = None
        self.dispatch = Dispatcher(self)  # requests from other processes
        self._spy = OverflowSpy(self.request_rescan)
        self._guard = WorkspaceGuard(engine.workspace)
        self.outage = Outage()  # the store or embedder is down: changes wait, retried with backoff

    # --- events -------------------------------------------------------------------------------------------
    def mark(self, abspath: str, is_dir: bool, kind: str) -> None:
        """Note that ``abspath`` changed somehow; what changed is read from disk later."""
        try:
            rel = Path(abspath).relative_to(self.root).as_posix()
        except ValueError:
            return
        if rel == "." or any(p in PRUNED_DIRS for p in rel.split("/")):
            return
        with self._lock:
            (self._dirs if is_dir else self._files).add(rel)
            self.last_event_at, self.last_event = time.time(), f"{kind} {rel}"
            self._last_mark = time.monotonic()
            if is_dir and any(r == rel or r.startswith(rel + "/") for r in self._roots):
                self._rescan = self._rescan or f"folder {rel} changed: watching again"
        self._wake.set()

    def request_rescan(self, reason: str) -> None:
        with self._lock:
            self._rescan = reason
        log.warning("%s: rescanning the workspace", reason)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def served(self) -> int:
        """Requests answered for other processes."""
        return self.dispatch.served

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._files) + len(self._dirs)

    # --- the loop -----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        existing = connect(self.engine.workspace)
        if existing is not None:
            pid = existing.pid
            existing.close()
            raise IndexLockedError(
                f"kb watch is already running for {self.root} (pid {pid}). Only one process "
                "may write an index; use that one (kb status shows it) or stop it first."
            )
        with self.engine.write_lock():
            preload(self.shared_embedder)  # the model loads while the store opens
            with contextlib.suppress(IndexCorruptError):  # repaired by the start-up run; a server down: stop
                self.engine.store.check()
            try:
                self._start()
                self._full("start-up reconcile")
                assert self.reader is not None
                warm_up(self.reader, self.dispatch.query_lock)
                self.ready.set()
                log.info("ready: watching %s (%s); Ctrl-C stops", self.root, self.mode)
                next_check = time.monotonic() + self._check_every
                while not stop.is_set():
                    woke = self._wake.wait(timeout=1.0)
                    self._check_workspace()
                    self.dispatch.answer_index_requests(self._full)
                    if self.outage.down:  # changes accumulate until the next attempt is due
                        if self.outage.due():
                            self._recover()
                    elif woke:
                        self._settle(stop)
                        self._wake.clear()
                        self._drain()
                    if time.monotonic() >= next_check and not self.outage.down:
                        self._stat_reconcile()
                        next_check = time.monotonic() + self._check_every
            finally:
                self._shutdown()

    @property
    def _check_every(self) -> float:
        return self.poll_every if self.mode == "polling" else self.reconcile_every

    def _start(self) -> None:
        # Queries are answered by a second engine on the same store (its own manifest connection) with a
        # cached view of the one embedder: a repeated persona or question is not embedded again.
        shared = self.shared_embedder
        cached = LockedEmbedder(shared.inner, shared.lock, cache_size=2048)
        reader = IndexEngine(
            self.engine.workspace, self.engine.settings, embedder=cached, store=self.engine.store
        )
        self.reader = self.query.over(reader)
        if self.serve:
            self._server = WatchServer(socket_path(self.engine.workspace.state_dir), self.dispatch)
            self._server.start()
        log.info(
            "kb watch (pid %d) watching %s; serving other processes on %s",
            os.getpid(),
            self.root,
            self._server.path if self._server else "(not serving)",
        )
        logging.getLogger("watchdog").addHandler(self._spy)
        if self.mode == "inotify":
            self._observe()
        self._write_status()

    def _observe(self) -> None:
        try:
            self._observer = start_observer(
                self.root, self._roots, EventHandler(self.mark), self.observer_factory
            )
        except WatchLimitError as exc:
            self.mode = "polling"
            self.last_error = (
                f"inotify limit reached ({exc}); polling every {self.poll_every:g}s "
                "instead. Raise fs.inotify.max_user_watches to watch with inotify."
            )
            log.warning(self.last_error)

    def _settle(self, stop: threading.Event) -> None:
        """Wait for a burst to go quiet (``debounce``), but no longer than ``max_delay``."""
        first = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            quiet_for = now - self._last_mark
            if quiet_for >= self.debounce or now - first >= self.max_delay:
                return
            stop.wait(min(self.debounce - quiet_for, self.max_delay - (now - first)))

    def _drain(self) -> None:
        with self._lock:
            files, dirs, rescan = self._files, self._dirs, self._rescan
            self._files, self._dirs, self._rescan = set(), set(), None
        if rescan:
            if self.mode == "inotify" and "watching again" in rescan:
                self._rewatch()
            self._full(rescan)
        elif files or dirs:
            self._targeted(files, dirs, "changed")

    def _requeue(self, files: set[str], dirs: set[str], rescan: str | None) -> None:
        """Changes a failed run did not apply wait again."""
        with self._lock:
            self._files |= files
            self._dirs |= dirs
            self._rescan = self._rescan or rescan

    def _recover(self) -> None:
        """The backend may answer again: one full run applies every waiting change and reconciles what a
        failure between the manifest's commit and the store's deletions left (kept waiting if it fails)."""
        self._wake.clear()
        with self._lock:
            files, dirs, rescan = self._files, self._dirs, self._rescan
            self._files, self._dirs, self._rescan = set(), set(), None
        why = f"retrying {len(files) + len(dirs)} waiting change(s)"
        self._run(lambda: self.engine.index(), why, None, lambda: self._requeue(files, dirs, rescan or why))

    def _rewatch(self) -> None:
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer.stop()
                self._observer.join(timeout=5)
            self._observer = None
        self._observe()

    # --- runs ---------------------------------------------------------------------------------------------
    def _targeted(self, files: set[str], dirs: set[str], reason: str) -> None:
        covered = set(files) | (self.engine.paths_under(dirs) if dirs else set())
        if len(covered) > FULL_RUN_ABOVE:
            self._full(f"{len(covered)} paths changed")
            return
        cands, skipped = discover_paths(
            self.root,
            self.include,
            self.exclude,
            self.max_bytes,
            covered,
            follow_hardlinks=self.engine.settings.follow_hardlinks,
        )
        covered.update(c.path for c in cands)

        def work() -> IndexReport:
            return self.engine.index(scope=(cands, skipped, sorted(covered)))

        stats = {c.path: (c.size, c.mtime_ns) for c in cands}
        self._run(work, reason, stats, lambda: self._requeue(files, dirs, None))

    def _full(self, why: str) -> IndexReport | None:
        return self._run(lambda: self.engine.index(), why, None, lambda: self._requeue(set(), set(), why))

    def _run(
        self,
        work: Callable[[], IndexReport],
        reason: str,
        stats: dict[str, tuple[int, int]] | None,
        requeue: Callable[[], None],
    ) -> IndexReport | None:
        started = time.perf_counter()
        try:
            report = work()
        except UNAVAILABLE as exc:  # keep the changes; try again later
            requeue()
            delay = self.outage.failed()
            self.last_error = (
                f"{time.strftime('%H:%M:%S')} {exc} {self.pending} change(s) wait; next try in {delay:g} s"
            )
            log.warning(self.last_error)
            self._write_status()
            return None
        except Exception as exc:  # survive anything; the periodic reconcile retries
            self.last_error = f"{time.strftime('%H:%M:%S')} re-index failed ({reason}): {exc}"
            log.error(self.last_error, exc_info=not isinstance(exc, (KbError, OSError)))
            self._write_status()
            return None
        if (down := self.outage.over()) is not None:
            log.info("the index answers again after %.0f s: waiting changes applied", down)
            self.last_error = None
        for s in report.skipped:  # loaded and found nothing to index: not read again until it changes
            if stats and s.path in stats and not s.reason.startswith(("cannot", "permission", "vanished")):
                self._unloadable[s.path] = stats[s.path]
        event = Reindexed.of(report, (time.perf_counter() - started) * 1000, reason)
        if event is not None:
            self.reindexes += 1
            self.last_reindex_at = time.time()
            log.info("re-indexed: %s", event.line())
            for line in report.repaired:
                log.warning("repaired: %s", line)
            self.on_reindex(event)
        if report.redacted:
            log.warning("redacted: %s", ", ".join(f"{r.path}:{r.line} {r.kind}" for r in report.redacted))
        self._write_status()
        return report

    def _stat_reconcile(self) -> None:
        """Compare the tree's sizes and mtimes with the manifest (nothing is read); re-index what differs."""
        try:
            dirty = self.engine.changed_paths(self._unloadable)
        except OSError as exc:
            log.warning("periodic reconcile could not list the workspace: %s", exc)
            return
        if dirty:
            log.info("periodic reconcile: %d path(s) differ from the index", len(dirty))
            self._targeted(dirty, set(), "reconcile")

    # --- health -------------------------------------------------------------------------------------------
    def _check_workspace(self) -> None:
        changed = self._guard.check()  # raises when the workspace or its index folder is gone
        if changed:  # settings are read once; say so rather than index with stale ones
            self.last_error = changed
            log.warning(changed)

    def status_of_index(self) -> Status:
        """``kb status`` as answered by the watcher: the index, and the watcher itself."""
        assert self.reader is not None
        return self.reader.engine.status(self.status())

    def status(self) -> WatcherStatus:
        return WatcherStatus(
            running=True,
            pid=os.getpid(),
            mode=self.mode,
            started_at=self.started_at,
            last_event_at=self.last_event_at,
            last_event=self.last_event,
            pending=self.pending,
            last_error=self.last_error,
            last_reindex_at=self.last_reindex_at,
            served=self.served,
            store_down_since=self.outage.since,
            next_retry_at=self.outage.retry_at(),
        )

    def _write_status(self, running: bool = True) -> None:
        save_watcher_status(self.engine.workspace, self.status(), running)

    def _shutdown(self) -> None:
        logging.getLogger("watchdog").removeHandler(self._spy)
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer.stop()
                self._observer.join(timeout=5)
        if self._server is not None:
            self._server.stop()
        self.dispatch.stop()  # lets a request (or the warm-up) in progress finish
        self._write_status(running=False)
        log.info("kb watch (pid %d) stopped; the index is complete up to the last re-index", os.getpid())
        if self.reader is not None:
            self.reader.engine.close()  # the store is the main engine's: it stays open until that closes
