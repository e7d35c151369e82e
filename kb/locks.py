"""Advisory file locks (``flock``): one helper for every lock kb takes.

* the index's write lock (one writer per workspace; :class:`kb.index.engine.IndexEngine`);
* the resources lock (one fetch at a time; :mod:`kb.resources`);
* the model-export lock (one ONNX export per cache folder; :mod:`kb.backends.embedders`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path


class Busy(Exception):
    """The lock is held by another process; ``holder`` is the pid it wrote, when it wrote one."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool | float = True, record_pid: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    ``wait``: True blocks until the lock is free; False raises :class:`Busy` at once when another process
    holds it; a number of seconds keeps trying that long, then raises :class:`Busy`. ``record_pid`` writes
    this process's pid into the file, so a refused process can say who holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if isinstance(wait, bool) else time.monotonic() + wait
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait is True else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    fh.seek(0)
                    raise Busy(fh.read().strip() or "unknown") from None
                time.sleep(0.05)
        try:
            if record_pid:
                fh.seek(0)
                fh.truncate()
                fh.write(str(os.getpid()))
                fh.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
