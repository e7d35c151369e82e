"""What changed on disk since the index was built, found by stat alone (nothing is read): ``kb watch``'s
periodic reconcile and its folder events (:meth:`kb.index.engine.IndexEngine.changed_paths` and
:meth:`~kb.index.engine.IndexEngine.paths_under`)."""

from __future__ import annotations

import os
from pathlib import Path

from ingest.discovery import discover
from ingest.layout import DEFAULT_INCLUDE, PRUNED_DIRS
from kb.index.manifest import Manifest
from kb.settings import Settings


def changed_paths(
    root: Path, settings: Settings, manifest: Manifest, unloadable: dict[str, tuple[int, int]] | None = None
) -> set[str]:
    """Paths whose files differ from the index by size or mtime, or are gone, or are new (nothing is read: a
    stat per file). ``unloadable``: new files known to hold nothing indexable at that (size, mtime)."""
    unloadable = unloadable or {}
    cands, skipped = discover(
        root,
        DEFAULT_INCLUDE + settings.include,
        settings.exclude,
        int(settings.max_file_mb * 1024 * 1024),
        follow_hardlinks=settings.follow_hardlinks,
    )
    old = manifest.sources()
    held = {s.path for s in skipped if s.path in old}  # kept or dropped by the indexer's own rules
    dirty = {
        c.path
        for c in cands
        if (c.path not in old and unloadable.get(c.path) != (c.size, c.mtime_ns))
        or (c.path in old and (old[c.path].size, old[c.path].mtime_ns) != (c.size, c.mtime_ns))
    }
    present = {c.path for c in cands}
    dirty |= {p for p in old if p not in present and p not in held}
    dirty |= {s.path for s in skipped if s.path in old and not s.reason.startswith(("cannot", "permission"))}
    return dirty


def paths_under(root: Path, manifest: Manifest, folders: set[str]) -> set[str]:
    """Every path under ``folders`` (relative to ``root``), on disk or in the index: what a folder event may
    have touched (a moved, deleted or renamed folder)."""
    known = list(manifest.sources())
    covered: set[str] = set()
    for d in folders:
        covered.update(p for p in known if p.startswith(d + "/"))
        base = root / d
        if base.is_dir() and not base.is_symlink():
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = [n for n in dirnames if n not in PRUNED_DIRS]
                here = Path(dirpath).relative_to(root).as_posix()
                covered.update(f"{here}/{n}" for n in filenames)
    return covered
