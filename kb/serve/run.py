"""`kb watch`: run a :class:`kb.serve.watcher.Watcher` until SIGINT/SIGTERM.

:func:`watch` runs a :class:`kb.serve.watcher.Watcher` until SIGINT/SIGTERM; :mod:`kb.serve.client` is the
other processes' side of its socket (:mod:`kb.serve.server`).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from kb.answer.query import Query
from kb.index.engine import IndexEngine
from kb.serve.watcher import Watcher


def watch(
    engine: IndexEngine, query: Query | None = None, stop: threading.Event | None = None, **options: Any
) -> None:
    """Run a :class:`Watcher` until SIGINT/SIGTERM (or ``stop`` is set)."""
    stop = stop or threading.Event()
    watcher = Watcher(engine, query, **options)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        watcher.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.close()
