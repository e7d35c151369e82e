"""``kb doctor``: check an index against the files and against itself, say what is wrong and how to fix it,
and (``repair``) fix what can be fixed without re-embedding.

Checks, in order:

* ``watcher`` — the ``kb watch`` socket: a live watcher that answers, one that does not, or a socket left by a
  killed watcher (repair: remove it);
* ``damaged`` — ``chroma.damaged-*`` folders a repair once set aside and nothing reads (repair with
  ``remove_damaged``: delete them);
* ``manifest`` — the manifest opens and passes SQLite's quick check;
* ``fingerprint`` — the index was built with the current settings (model, chunking, ``[secrets]``);
* ``lexical`` — the BM25 tables match the chunks (repair: rebuild them from the chunks);
* ``sources`` — every indexed source has chunks (repair: forget the others; ``kb index`` reads them again);
* ``vectors`` — the vector index opens and holds exactly the manifest's chunk ids, nothing missing (an
  emptied ``chroma.sqlite3``), nothing orphaned (repair: restore missing vectors from the manifest's cache,
  delete orphans; an index that cannot be opened is set aside and rebuilt from the cache);
* ``collections`` — vectors of other fingerprints (an old model's) still stored (repair: drop them);
* ``files`` — files changed, added or deleted since the last index (fix: ``kb index``).

While ``kb watch`` runs it owns the vector index (embedded Chroma supports one process): ``vectors`` and
``collections`` are then not checked, and ``repair`` is refused.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from kb.errors import IndexCorruptError, IndexLockedError, KbError, StoreUnavailableError
from kb.index.engine import IndexEngine
from kb.index.indexer import collection_name
from kb.index.manifest import Manifest
from kb.models import DoctorCheck, DoctorReport
from kb.serve.client import connect, owner_pid, socket_path

DAMAGED = "chroma.damaged-*"
Add = Callable[[DoctorCheck], None]


def diagnose(engine: IndexEngine, *, repair: bool = False, remove_damaged: bool = False) -> DoctorReport:
    """Every check (see the module docstring), repairing what ``repair`` allows."""
    report = DoctorReport(str(engine.workspace.root))
    add = report.checks.append
    owner = _watcher(engine, add, repair)
    if owner is not None and repair:
        raise IndexLockedError(
            f"kb watch (pid {owner}) owns the index of {engine.workspace.root}. Stop it, then run: "
            "kb doctor --repair"
        )
    _damaged(engine.workspace.state_dir, add, repair and remove_damaged)
    if not engine.has_index():
        add(DoctorCheck("manifest", False, "nothing is indexed yet", "kb index"))
        return report
    try:
        manifest = engine.reader()
        health = manifest.integrity()
    except IndexCorruptError as exc:
        add(DoctorCheck("manifest", False, str(exc), "move .workos/.kb aside, then: kb index"))
        return report
    if health != "ok":
        add(DoctorCheck("manifest", False, f"damaged: {health}", "move .workos/.kb aside, then: kb index"))
        return report
    sources, chunks = len(manifest.sources()), manifest.chunk_total()
    add(DoctorCheck("manifest", True, f"{sources} sources, {chunks} chunks"))
    with _locked(engine, repair):
        _manifest_checks(manifest, add, repair)
        if owner is not None:
            add(DoctorCheck("vectors", True, f"not checked: kb watch (pid {owner}) owns the vector index"))
        elif _fingerprint(engine, manifest, add):
            _vectors(engine, manifest, add, repair)
            _collections(engine, add, repair)
    _files(engine, add, owner)
    return report


@contextlib.contextmanager
def _locked(engine: IndexEngine, repair: bool) -> Iterator[None]:
    if not repair:
        yield
        return
    with engine.write_lock():
        yield


def _watcher(engine: IndexEngine, add: Add, repair: bool) -> int | None:
    """Check the watcher's socket; the pid of a live watcher."""
    ws = engine.workspace
    path = socket_path(ws.state_dir)
    pid = owner_pid(ws)
    if not path.exists():
        if pid is not None:
            add(DoctorCheck("watcher", False, f"kb watch (pid {pid}) runs without its socket", "restart it"))
        else:
            add(DoctorCheck("watcher", True, "no kb watch running"))
        return pid
    try:
        remote = connect(ws, wait=2.0)
    except KbError as exc:
        add(DoctorCheck("watcher", False, str(exc), "stop kb watch and start it again"))
        return pid
    if remote is None:
        check = DoctorCheck(
            "watcher", False, f"a socket left by a killed kb watch: {path}", "kb doctor --repair removes it"
        )
        if repair:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            check.repaired = True
        add(check)
        return None
    with remote:
        remote.call("ping")
    add(DoctorCheck("watcher", True, f"kb watch (pid {remote.pid}) owns the index and answers"))
    return remote.pid


def _damaged(state_dir: Path, add: Add, remove: bool) -> None:
    folders = sorted(state_dir.glob(DAMAGED)) if state_dir.is_dir() else []
    if not folders:
        add(DoctorCheck("damaged", True, "no damaged vector index set aside"))
        return
    size = sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file())
    names = ", ".join(d.name for d in folders)
    check = DoctorCheck(
        "damaged",
        False,
        f"{len(folders)} damaged vector index(es) set aside, never read again ({size / 1e6:.1f} MB): {names}",
        "kb doctor --repair --remove-damaged deletes them",
    )
    if remove:
        for d in folders:
            shutil.rmtree(d)
        check.repaired = True
    add(check)


def _manifest_checks(manifest: Manifest, add: Add, repair: bool) -> None:
    if manifest.lexical_ok():
        add(DoctorCheck("lexical", True, "the BM25 tables match the chunks"))
    else:
        check = DoctorCheck(
            "lexical", False, "the BM25 tables do not match the chunks", "kb doctor --repair rebuilds them"
        )
        if repair:
            manifest.rebuild_lexical()
            check.repaired = manifest.lexical_ok()
        add(check)
    empty = manifest.empty_sources()
    if not empty:
        add(DoctorCheck("sources", True, "every indexed source has chunks"))
        return
    check = DoctorCheck(
        "sources",
        False,
        f"{len(empty)} indexed source(s) have no chunks: {', '.join(empty[:5])}",
        "kb doctor --repair forgets them (kb index then reads them again)",
    )
    if repair:
        with manifest.db:
            for path in empty:
                manifest.remove_source(path)
        check.repaired = True
    add(check)


def _fingerprint(engine: IndexEngine, manifest: Manifest, add: Add) -> bool:
    built = manifest.get_meta("fingerprint")
    if built == engine.fingerprint:
        add(DoctorCheck("fingerprint", True, f"built with the current settings ({built})"))
        return True
    add(
        DoctorCheck(
            "fingerprint",
            False,
            f"built with other settings ({built}; now {engine.fingerprint}): model, chunking or [secrets] "
            "changed; the vector index was not checked",
            "kb index (rebuilds, reusing cached vectors)",
        )
    )
    return False


def _vectors(engine: IndexEngine, manifest: Manifest, add: Add, repair: bool) -> None:
    store = engine.store
    try:
        store.check()
    except StoreUnavailableError as exc:  # a Chroma server down is not damage: nothing to repair here
        add(DoctorCheck("vectors", False, str(exc), "start the Chroma server (or fix KB_CHROMA_URL)"))
        return
    except IndexCorruptError as exc:
        check = DoctorCheck(
            "vectors",
            False,
            f"the vector index cannot be opened: {exc}",
            "kb doctor --repair sets it aside and rebuilds it from the cached vectors",
        )
        if repair:
            done = store.reset()
            notes = engine.reconcile(embed=False)
            check.message += f" (repaired: {done}; {'; '.join(notes)})"
            check.repaired = not any("no cached vector" in n for n in notes)
        add(check)
        return
    want, have = manifest.all_chunk_ids(), store.ids()
    missing, extra = want - have, have - want
    if not missing and not extra:
        add(DoctorCheck("vectors", True, f"the vector index holds exactly the {len(want)} chunks"))
        return
    check = DoctorCheck(
        "vectors",
        False,
        f"the manifest lists {len(want)} chunks, the vector index holds {len(have)}: {len(missing)} "
        f"missing, {len(extra)} orphaned",
        "kb doctor --repair restores them from the cached vectors (no embedding)",
    )
    if repair:
        notes = engine.reconcile(embed=False)
        check.message += f" (repaired: {'; '.join(notes)})"
        check.repaired = not any("no cached vector" in n for n in notes)
        if not check.repaired:
            check.fix = "kb index (embeds the chunks whose vector is not cached)"
    add(check)


def _collections(engine: IndexEngine, add: Add, repair: bool) -> None:
    listing = getattr(engine.store, "collections", None)
    if listing is None:
        return
    current = getattr(engine.store, "collection_name", None) or collection_name(engine.fingerprint)
    try:
        others = [n for n in listing() if n != current]
    except StoreUnavailableError:  # said by the vectors check
        return
    if not others:
        add(DoctorCheck("collections", True, "no vectors of other settings kept"))
        return
    check = DoctorCheck(
        "collections",
        False,
        f"vectors of other settings still stored: {', '.join(others)}",
        "kb doctor --repair drops them (kb index does too)",
    )
    if repair:
        engine.store.drop_other_collections()
        check.repaired = True
    add(check)


def _files(engine: IndexEngine, add: Add, owner: int | None) -> None:
    dirty = sorted(engine.changed_paths())
    if not dirty:
        add(DoctorCheck("files", True, "the index matches the files"))
    elif owner is not None:
        add(DoctorCheck("files", True, f"{len(dirty)} changed file(s): kb watch (pid {owner}) indexes them"))
    else:
        shown = ", ".join(dirty[:5]) + (f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else "")
        add(DoctorCheck("files", False, f"{len(dirty)} file(s) differ from the index: {shown}", "kb index"))
