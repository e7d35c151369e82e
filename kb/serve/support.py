"""Pieces of ``kb watch`` that need no watchdog: the targeted discovery, the shared embedder, the re-index
record."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ingest.discovery import PRUNED_DIRS, Candidate, GlobSet, Skipped, _check_file


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


def discover_paths(
    root: Path, include: list[str], exclude: list[str], max_bytes: int, paths: Iterable[str]
) -> tuple[list[Candidate], list[Skipped]]:
    """:func:`ingest.discovery.discover` restricted to ``paths`` (relative): the same verdict per file."""
    includes, excludes = GlobSet(include), GlobSet(exclude)
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    for rel in sorted(set(paths)):
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts) or any(p in PRUNED_DIRS for p in parts[:-1]):
            continue
        ok = True
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if (
                excludes.match(d)
                or excludes.match(d + "/")
                or not includes.may_contain(d)
                or (root / d).is_symlink()
            ):
                ok = False
                break
        if not ok or not includes.match(rel) or excludes.match(rel):
            continue
        full = root / rel
        if not os.path.lexists(full) or (full.is_dir() and not full.is_symlink()):
            continue
        verdict = _check_file(root, full, rel, parts[-1], max_bytes)
        if isinstance(verdict, Skipped):
            skipped.append(verdict)
        else:
            candidates.append(verdict)
    return candidates, skipped


def literal_dir(pattern: str) -> str:
    """The folder a glob's literal prefix names: ``.workos/context/**`` -> ``.workos/context``."""
    literal = re.split(r"[*?\[]", pattern.strip().removeprefix("./"), maxsplit=1)[0]
    return literal.rsplit("/", 1)[0] if "/" in literal else ""
