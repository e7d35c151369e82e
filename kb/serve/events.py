"""File-system events for ``kb watch``: the only module that imports watchdog.

Events only *mark* paths dirty (the watcher re-reads them from disk later), so duplicate, out-of-order or
half-understood events cannot make the index wrong. Known watchdog pitfalls handled here: an inotify queue
overflow is only logged by watchdog (:class:`OverflowSpy` turns it into a rescan), and watch limits raise
ENOSPC/EMFILE (:class:`WatchLimitError`: the watcher falls back to polling).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from kb.serve.support import literal_dir

IGNORED = {"opened", "closed_no_write"}  # our own reads of files must not wake us

Mark = Callable[[str, bool, str], None]  # (absolute path, is a folder, event kind)


class WatchLimitError(Exception):
    """The kernel refused more inotify watches (fs.inotify.max_user_watches / instances, or memory)."""


def make_observer() -> Any:
    return Observer()


class EventHandler(FileSystemEventHandler):
    """Marks every path an event names (source and destination of a move)."""

    def __init__(self, mark: Mark):
        self.mark = mark

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED or (event.is_directory and event.event_type == "modified"):
            return  # a folder's "modified" only says its entries changed: their own events follow
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                self.mark(os.fsdecode(raw), event.is_directory, event.event_type)


class OverflowSpy(logging.Handler):
    """watchdog reports an inotify queue overflow only as a log warning: turn it into a rescan."""

    def __init__(self, rescan: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.rescan = rescan

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.rescan("the inotify event queue overflowed (events were lost)")


def watch_roots(include: list[str]) -> list[str]:
    """The folders the include globs start from, without those inside another ('' is the root)."""
    roots = sorted({literal_dir(p) for p in include})
    return [r for r in roots if not any(o != r and (not o or r.startswith(o + "/")) for o in roots)]


def start_observer(root: Path, roots: list[str], handler: EventHandler, factory: Callable[[], Any]) -> Any:
    """A started observer with recursive watches on each root (the nearest existing folder above a missing
    one,
    not recursive); :class:`WatchLimitError` when the kernel's watch limits are reached."""
    observer = factory()
    try:
        for rel in roots:
            target = root / rel if rel else root
            recursive = True
            while not target.is_dir() and target != root:
                target, recursive = target.parent, False
            observer.schedule(handler, str(target), recursive=recursive)
        observer.start()
    except OSError as exc:
        with contextlib.suppress(Exception):
            observer.stop()
        if exc.errno not in (errno.ENOSPC, errno.EMFILE, errno.ENOMEM):
            raise
        raise WatchLimitError(exc.strerror or str(exc)) from None
    return observer
