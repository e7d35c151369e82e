"""Pieces of ``kb watch`` that need no watchdog: the re-index record, the folders a glob watches, and whether
the workspace and its index folder are still there.

(The targeted discovery the watcher runs on changed paths is :func:`ingest.discovery.discover_paths`.)
"""

from __future__ import annotations

import dataclasses
import os

from ingest.discovery import glob_literal
from ingest.layout import WORKOS_DIR
from kb.errors import KbError, StorageError, WorkspaceNotFoundError
from kb.workspace import Workspace


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


def workspace_gone(workspace: Workspace, identity: tuple[int, int]) -> KbError | None:
    """Why ``kb watch`` must stop, if the workspace folder (``identity``: its device and inode at start) was
    moved or deleted, or its index folder deleted (the socket and the write lock went with it: another
    process could now open the index beside this one)."""
    root = workspace.root
    try:
        st = os.stat(root)
        same = (st.st_dev, st.st_ino) == identity and (root / WORKOS_DIR).is_dir()
    except OSError:
        same = False
    if not same:
        return WorkspaceNotFoundError(
            f"The workspace folder {root} was moved or deleted while kb watch was running; kb watch "
            "stopped (nothing was half-written). Start it again where the workspace is now: "
            "kb watch --workspace NEW_PATH"
        )
    if not workspace.state_dir.is_dir():
        return StorageError(
            f"The index folder {workspace.state_dir} was deleted while kb watch was running; kb watch "
            f"stopped. Start it again (it rebuilds the index): kb watch --workspace {root}"
        )
    return None
