"""What a running ``kb watch`` answers for other processes (over :mod:`kb.serve.server`'s socket).

Queries (``search``, ``ask``, ``status``) run on the watcher's reader, one at a time; ``kb index`` is queued
for the watcher's own thread, the index's single writer, and answered when that run is done.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kb.answer.query import Query
from kb.errors import KbError
from kb.index.engine import IndexEngine
from kb.models import IndexReport, Status
from kb.serve.client import encode


class Owner(Protocol):
    """What the dispatcher needs of the watcher that owns it (:class:`kb.serve.watcher.Watcher`)."""

    root: Path
    engine: IndexEngine
    reader: Query | None
    last_error: str | None

    def wake(self) -> None: ...

    def status_of_index(self) -> Status: ...


class Dispatcher:
    """``dispatcher(method, params)`` answers one request for ``watcher``."""

    def __init__(self, watcher: Owner):
        self.watcher = watcher
        self.served = 0  # requests answered for other processes
        self.query_lock = threading.Lock()  # one query at a time on the reader (and none while stopping)
        self._lock = threading.Lock()
        self._stopping = False
        self._index_requests: list[tuple[threading.Event, dict[str, Any]]] = []

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        w = self.watcher
        self.served += 1
        if method == "ping":
            return {"pid": os.getpid(), "workspace": str(w.root)}
        if method == "config":
            return json.loads(w.engine.settings.model_dump_json())
        if method == "index":
            done: dict[str, Any] = {}
            event = threading.Event()
            with self._lock:
                if self._stopping:
                    raise KbError("kb watch is stopping; run kb index again once it has stopped.")
                self._index_requests.append((event, done))
            w.wake()
            event.wait()
            if "error" in done:
                raise done["error"]
            return encode(done["report"])
        reader = w.reader
        assert reader is not None
        verb = w.status_of_index if method == "status" else getattr(reader, method)
        with self.query_lock:  # params were checked against the method's schema (kb.serve.protocol)
            result = verb(**params)
        return encode(result)

    def answer_index_requests(self, full: Callable[[str], IndexReport | None]) -> None:
        """Answer the queued ``kb index`` requests (on the watcher's thread): one ``full`` run answers every
        request waiting now (it starts after all of them asked)."""
        with self._lock:
            todo, self._index_requests = self._index_requests, []
        if not todo:
            return
        report = full("kb index (routed to the watcher)")
        error = KbError(f"Indexing failed: {self.watcher.last_error}")
        outcome: dict[str, Any] = {"report": report} if report else {"error": error}
        for event, done in todo:
            done.update(outcome)
            event.set()

    def stop(self) -> None:
        """Let a query in progress finish (native code running in a thread while the interpreter exits aborts
        the process), then refuse what waits."""
        self.query_lock.acquire(timeout=120)
        with self._lock:
            self._stopping = True
            waiting, self._index_requests = self._index_requests, []
        for event, done in waiting:
            done["error"] = KbError("kb watch stopped before indexing; run kb index again.")
            event.set()
