"""Pieces of ``kb watch`` that need no watchdog: the re-index record, and the folders a glob watches.

(The targeted discovery the watcher runs on changed paths is :func:`ingest.discovery.discover_paths`.)
"""

from __future__ import annotations

import dataclasses

from ingest.discovery import glob_literal


@dataclasses.dataclass
class Reindexed:
    """One re-index: what the log line says, and what ``kb watch --json`` prints."""

    paths: list[tuple[str, str]]  # (action, path): added, updated, removed, renamed (a -> b)
    chunks_embedded: int
    ms: float
    reason: str

    def line(self) -> str:
        shown = ", ".join(f"{a} {p}" for a, p in self.paths[:3])
        more = f" (+{len(self.paths) - 3} more)" if len(self.paths) > 3 else ""
        return f"{shown}{more} · {self.chunks_embedded} chunks embedded · {self.ms:.0f} ms"


def literal_dir(pattern: str) -> str:
    """The folder a glob's literal prefix names: ``.workos/context/**`` -> ``.workos/context``."""
    literal = glob_literal(pattern)
    return literal.rsplit("/", 1)[0] if "/" in literal else ""
