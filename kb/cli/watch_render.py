"""Terminal output of ``kb watch`` and of the watcher line of ``kb status`` (light: no watchdog, no index)."""

from __future__ import annotations

import datetime as dt
import logging
import sys

from rich.console import Console
from rich.markup import escape

from kb.models import WatcherStatus


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "never"


def print_watcher(out: Console, w: WatcherStatus) -> None:
    if w.running:
        out.print(
            f"watcher       running (pid {w.pid}, {w.mode}) since {_when(w.started_at)} · "
            f"{w.pending} pending path(s)"
        )
    else:
        out.print(f"watcher       not running (last: pid {w.pid}, started {_when(w.started_at)})")
    out.print(f"  last event  {escape(w.last_event or 'none')} at {_when(w.last_event_at)}")
    out.print(f"  last re-index {_when(w.last_reindex_at)}")
    if w.last_error:
        out.print(f"  [yellow]last error[/]  {escape(w.last_error)}")


def log_to_stderr() -> None:
    """kb's log lines (INFO and up) on stderr with the time; other libraries' from WARNING up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("kb").setLevel(logging.INFO)
