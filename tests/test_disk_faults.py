"""Disk and I/O faults (issue 14, item 3): a full disk, an I/O error, a read-only file system and a vanished
index folder give a one-line error saying what to do — never a traceback, never a healthy vector index moved
aside as "damaged" — and the next run after the fault clears completes and equals a rebuild.

Two ways: a real, tiny tmpfs mounted over the workspace's index folder (needs root: skipped with the reason
otherwise), and an error injected at each place the index is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import chromadb
import pytest
from chromadb.api.models.Collection import Collection
from chromadb.errors import InternalError

import kb.index.engine as engine_module
from kb import KnowledgeBase
from kb.errors import StorageError
from kb.index.manifest import Manifest
from kb.testing import FakeEmbedder, copy_workspace, run_kb, small_workspace
from kb.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]

Snapshot = tuple[list[tuple[str, str]], list[tuple[str, str, int, int, str]]]


def snapshot(ws: Path) -> Snapshot:
    """(sources, chunks) of the index, after checking that the vector index holds exactly its chunks."""
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        manifest = kb.engine.reader()
        chunks = sorted((c.id, c.path, c.start_line, c.end_line, c.text) for c in manifest.iter_chunks())
        sources = sorted((s.path, s.content_hash) for s in manifest.sources().values())
        assert kb.engine.store.ids() == {c[0] for c in chunks}
    return sources, chunks


def rebuilt(ws: Path, tmp_path: Path) -> Snapshot:
    """The snapshot of the same files indexed from scratch elsewhere."""
    fresh = copy_workspace(ws, tmp_path / "rebuilt")
    with KnowledgeBase.open(fresh, embedder=FakeEmbedder()) as kb:
        kb.index()
    return snapshot(fresh)


def index(ws: Path, **kw: Any) -> Any:
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        return kb.index(**kw)


def damaged(ws: Path) -> list[str]:
    return sorted(p.name for p in (ws / ".workos/.kb").glob("chroma.damaged-*"))


def change_files(ws: Path) -> None:
    (ws / "projects/prds/doc0.md").write_text("# Doc 0\n\nRewritten after the first index.\n")
    (ws / "projects/prds/doc9.md").write_text("# Doc 9\n\nA new file.\n")
    (ws / "projects/prds/doc1.md").unlink()


# --- a real, tiny file system ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A tmpfs of ``size`` mounted at ``path``; yields ``remount(options)``."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (the injected faults below still run)")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_an_error_not_a_damaged_index(workspace: Path, tmp_path: Path) -> None:
    with tmpfs(workspace / ".workos/.kb", "512k") as remount:
        for _ in range(2):  # the issue: the second run on a full disk moved the healthy Chroma folder aside
            with pytest.raises(StorageError, match=r"the disk is full\. Free some space") as caught:
                index(workspace)
            assert "\n" not in str(caught.value)
            assert damaged(workspace) == []
        remount("size=64m")
        report = index(workspace)
        assert not report.repaired or all("damaged" not in line for line in report.repaired)
        assert snapshot(workspace) == rebuilt(workspace, tmp_path)
        assert damaged(workspace) == []


def test_a_full_disk_through_the_cli_is_one_line(workspace: Path) -> None:
    with tmpfs(workspace / ".workos/.kb", "400k"):
        for _ in range(2):
            r = run_kb("index", "--workspace", workspace)
            assert r.returncode == 1, r.stdout
            assert r.stderr.startswith("error: Cannot use the index") and "the disk is full" in r.stderr
            assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
            assert damaged(workspace) == []


_CHILD = """
import json, sys
from kb import KnowledgeBase
from kb.errors import KbError
from kb.testing import FakeEmbedder
try:
    with KnowledgeBase.open(sys.argv[1], embedder=FakeEmbedder()) as kb:
        if sys.argv[2] == "index":
            kb.index()
        else:
            kb.search("alpha")
    print(json.dumps({"ok": True}))
except KbError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def in_child(ws: Path, verb: str) -> dict[str, Any]:
    """``verb`` (index or search) in a child process: a process of this one keeps Chroma's files open, and a
    file system with files open for writing cannot be remounted read-only."""
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ws), verb], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def test_a_read_only_file_system(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with tmpfs(ws / ".workos/.kb", "64m") as remount:
        assert in_child(ws, "index") == {"ok": True}
        change_files(ws)
        remount("ro")
        for verb in ("index", "search"):
            result = in_child(ws, verb)
            assert result["error"] == "StorageError" and "the file system is read-only" in result["message"]
        remount("rw")
        assert damaged(ws) == []
        assert in_child(ws, "index") == {"ok": True}
        assert snapshot(ws) == rebuilt(ws, tmp_path)


# --- an error injected at each write site --------------------------------------------------------------


def full(*_: Any, **__: Any) -> None:
    raise sqlite3.OperationalError("database or disk is full")


def io_error(*_: Any, **__: Any) -> None:
    raise sqlite3.OperationalError("disk I/O error")


def chroma_full(*_: Any, **__: Any) -> None:
    raise InternalError("Database error: error returned from database: (code: 13) database or disk is full")


def chroma_io(*_: Any, **__: Any) -> None:
    raise InternalError("error returned from database: (code: 10) disk I/O error")


def os_error(code: int) -> Callable[..., None]:
    def fail(*_: Any, **__: Any) -> None:
        raise OSError(code, os.strerror(code))

    return fail


# (what is patched, its attribute, the failure, what the message says)
SITES: dict[str, tuple[Any, str, Callable[..., None], str]] = {
    "state folder": (Workspace, "ensure_state_dir", os_error(errno.ENOSPC), "the disk is full"),
    "write lock": (engine_module, "file_lock", os_error(errno.EROFS), "read-only"),
    "manifest open": (sqlite3, "connect", io_error, "I/O error"),  # only the manifest is Python's sqlite3
    "vector cache": (Manifest, "put_vectors", full, "the disk is full"),
    "manifest commit": (Manifest, "put_source", io_error, "I/O error"),
    "chroma open": (chromadb, "PersistentClient", chroma_full, "the disk is full"),
    "chroma upsert": (Collection, "upsert", chroma_full, "the disk is full"),
    "chroma delete": (Collection, "delete", chroma_io, "I/O error"),
    "vector prune": (Manifest, "prune_vectors", os_error(errno.EIO), "I/O error"),
}


@pytest.mark.parametrize("site", sorted(SITES))
def test_a_fault_at_each_write_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site: str) -> None:
    ws = small_workspace(tmp_path)
    index(ws)
    change_files(ws)
    owner, name, failure, says = SITES[site]
    original = getattr(owner, name)
    faulty = [True]

    def sometimes(*args: Any, **kwargs: Any) -> Any:
        if faulty[0]:
            failure(*args, **kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, sometimes)
    for _ in range(2):  # a second run while the fault lasts: still an error, still nothing set aside
        with pytest.raises(StorageError, match=says) as caught:
            index(ws)
        assert "\n" not in str(caught.value) and "run the command again" in str(caught.value)
        assert damaged(ws) == []
    faulty[0] = False
    index(ws)
    assert snapshot(ws) == rebuilt(ws, tmp_path)


def test_an_injected_fault_through_the_cli_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from kb.cli import app

    ws = small_workspace(tmp_path)
    monkeypatch.setattr(Manifest, "put_source", io_error)
    result = CliRunner().invoke(app, ["index", "--workspace", str(ws)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith("error: Cannot use the index") and "I/O error" in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output


@pytest.mark.parametrize("stage", ["scan", "embed", "write"])
def test_the_index_folder_vanishing_mid_run(tmp_path: Path, stage: str) -> None:
    ws = small_workspace(tmp_path)
    index(ws)
    change_files(ws)
    gone: list[str] = []

    def progress(at: str, done: int, total: int) -> None:
        if at == stage and not gone:
            gone.append(at)
            shutil.rmtree(ws / ".workos/.kb")

    with pytest.raises(StorageError, match="vanished") as caught:
        index(ws, progress=progress)
    assert gone and "\n" not in str(caught.value)
    index(ws)
    assert snapshot(ws) == rebuilt(ws, tmp_path)
