"""``kb doctor`` (issue 14): it finds what is wrong with an index, says the fix, repairs what needs no
re-embedding, and exits non-zero while a problem remains. The issue's silent case — an emptied
``chroma.sqlite3``, after which dense search found nothing while ``kb status`` counted 110 chunks — is found
by doctor and repaired by ``kb search``/``ask`` at open time.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

import chromadb
import pytest

from kb import KnowledgeBase
from kb.answer.priors import leaf
from kb.backends.store import forget_client
from kb.errors import IndexLockedError
from kb.models import DoctorReport
from kb.serve.client import socket_path
from kb.testing import FakeEmbedder, run_kb, small_workspace, watcher_thread
from kb.workspace import find_workspace


def checks(report: DoctorReport) -> dict[str, tuple[bool, bool]]:
    """name -> (ok, repaired)."""
    return {c.name: (c.ok, c.repaired) for c in report.checks}


def doctor(ws: Path, emb: FakeEmbedder | None = None, **kw: bool) -> DoctorReport:
    with KnowledgeBase.open(ws, embedder=emb or FakeEmbedder()) as kb:
        return kb.doctor(**kw)


def chroma_client(ws: Path) -> tuple[Any, str]:
    """A Chroma client of the workspace's vectors, and the prefix of its collections: the embedded folder, or
    the Chroma server (``KB_TEST_STORE=server``), where the workspace's collections carry its id."""
    url = os.environ.get("KB_CHROMA_URL")
    if url is None:
        return chromadb.PersistentClient(path=str(ws / ".workos/.kb/chroma")), "kb_"
    port = int(url.rsplit(":", 1)[1])
    return chromadb.HttpClient(host="127.0.0.1", port=port), f"kb_{find_workspace(ws).workspace_id()}_"


def empty_chroma(ws: Path) -> None:
    """The issue's repro: the vector index's database emptied under a complete manifest (and this process's
    Chroma client of that folder forgotten, as it would be in the next ``kb`` process). On a Chroma server:
    the workspace's collection emptied there."""
    if os.environ.get("KB_CHROMA_URL") is None:
        (ws / ".workos/.kb/chroma/chroma.sqlite3").write_bytes(b"")
        forget_client(ws / ".workos/.kb/chroma")
        return
    client, prefix = chroma_client(ws)
    db = sqlite3.connect(ws / ".workos/.kb/manifest.sqlite3")
    (fingerprint,) = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
    db.close()
    collection = client.get_collection(prefix + fingerprint)
    collection.delete(ids=collection.get(include=[])["ids"])
    assert collection.count() == 0


@pytest.fixture
def small(tmp_path: Path) -> Path:
    ws = small_workspace(tmp_path)
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kb.index()
    return ws


def test_a_healthy_index_has_no_problem(small: Path) -> None:
    report = doctor(small)
    assert report.problems == [] and report.to_dict()["ok"] is True
    assert set(checks(report)) == {
        "watcher",
        "damaged",
        "manifest",
        "lexical",
        "sources",
        "fingerprint",
        "vectors",
        "collections",
        "files",
    }


def test_an_emptied_vector_index_is_found_and_repaired_without_embedding(small: Path) -> None:
    empty_chroma(small)
    report = doctor(small)
    (vectors,) = [c for c in report.checks if c.name == "vectors"]
    assert not vectors.ok and "holds 0" in vectors.message and "9 missing" in vectors.message
    assert vectors.fix and "--repair" in vectors.fix
    emb = FakeEmbedder()
    repaired = doctor(small, emb, repair=True)
    assert checks(repaired)["vectors"] == (False, True) and repaired.problems == []
    assert emb.calls == []  # restored from the manifest's cached vectors
    assert doctor(small).problems == []


def assert_no_chunk_embedded(kb: KnowledgeBase, emb: FakeEmbedder, query: str) -> None:
    """The repair re-embedded nothing: the embedder saw the query and, besides it, only the last parts of the
    team's section headings that retrieval compares with the query (embedded once, then cached)."""
    manifest = kb.engine.reader()
    rows = manifest.chunks_by_id(sorted(manifest.all_chunk_ids()))
    headings = {leaf(r.heading) for r in rows.values()}
    assert emb.calls[0] == query and set(emb.calls[1:]) <= headings, emb.calls


def test_search_repairs_an_emptied_vector_index_at_open_time(small: Path) -> None:
    empty_chroma(small)
    emb = FakeEmbedder()
    with KnowledgeBase.open(small, embedder=emb) as kb:
        hits = kb.search("Ada owns billing", k=3, mode="dense")
        assert hits and hits[0].path == ".workos/context/team.md"
        assert kb.engine.store.ids() == kb.engine.reader().all_chunk_ids()
        assert_no_chunk_embedded(kb, emb, "Ada owns billing")


def test_ask_repairs_it_too(small: Path) -> None:
    empty_chroma(small)
    with KnowledgeBase.open(small, embedder=FakeEmbedder()) as kb:
        kb.ask("Who owns billing?")
        assert kb.engine.store.count() == kb.engine.reader().chunk_total() == 9


def test_orphans_lexical_tables_and_empty_sources(small: Path) -> None:
    with KnowledgeBase.open(small, embedder=FakeEmbedder()) as kb:
        store = kb.engine.store
        store.upsert(["orphan-1"], FakeEmbedder().embed(["stray"]), [{"path": "gone.md"}])
    db = sqlite3.connect(small / ".workos/.kb/manifest.sqlite3")
    with db:
        db.execute("DELETE FROM sections_fts")
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("DELETE FROM chunks WHERE path = 'projects/prds/doc3.md'")
    db.close()
    report = doctor(small)
    found = checks(report)
    assert found["lexical"] == (False, False) and found["sources"] == (False, False)
    assert found["vectors"] == (False, False)
    repaired = doctor(small, repair=True)
    assert repaired.problems == [] or [c.name for c in repaired.problems] == ["files"]
    with KnowledgeBase.open(small, embedder=FakeEmbedder()) as kb:
        assert "projects/prds/doc3.md" in kb.index().added  # forgotten, so read again
    assert doctor(small).problems == []


def test_damaged_folders_are_removed_only_when_asked(small: Path) -> None:
    aside = small / ".workos/.kb/chroma.damaged-1700000000"
    aside.mkdir()
    (aside / "chroma.sqlite3").write_bytes(b"x" * 1000)
    assert checks(doctor(small))["damaged"] == (False, False)
    assert checks(doctor(small, repair=True))["damaged"] == (False, False) and aside.exists()
    assert checks(doctor(small, repair=True, remove_damaged=True))["damaged"] == (False, True)
    assert not aside.exists() and doctor(small).problems == []


def test_vectors_of_old_settings_are_dropped(small: Path) -> None:
    client, prefix = chroma_client(small)
    client.get_or_create_collection(prefix + "0123456789abcdef", embedding_function=None)
    assert checks(doctor(small))["collections"] == (False, False)
    assert checks(doctor(small, repair=True))["collections"] == (False, True)
    assert doctor(small).problems == []


def test_a_socket_left_by_a_killed_watcher(small: Path) -> None:
    path = socket_path(small / ".workos/.kb")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # never listened on; the file stays when the socket is closed
    report = doctor(small)
    (watcher,) = [c for c in report.checks if c.name == "watcher"]
    assert not watcher.ok and "killed kb watch" in watcher.message
    assert checks(doctor(small, repair=True))["watcher"] == (False, True) and not path.exists()


def test_with_a_live_watcher(small: Path) -> None:
    with watcher_thread(small) as (w, _, _):
        report = doctor(small)
        assert report.problems == []
        assert "owns the index and answers" in [c for c in report.checks if c.name == "watcher"][0].message
        with pytest.raises(IndexLockedError, match="Stop it, then run: kb doctor --repair"):
            doctor(small, repair=True)


def test_changed_files_and_other_settings(small: Path) -> None:
    (small / "projects/prds/doc0.md").write_text("# Doc 0\n\nChanged.\n")
    (files,) = [c for c in doctor(small).problems]
    assert files.name == "files" and "projects/prds/doc0.md" in files.message and files.fix == "kb index"
    (small / "kb.toml").write_text("chunk_max_tokens = 128\n")
    names = [c.name for c in doctor(small).problems]
    assert names == ["fingerprint", "files"]


def test_cli_exit_codes_and_json(indexed: Path) -> None:
    ok = run_kb("doctor", "--workspace", indexed, "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["ok"] is True and data["problems"] == 0
    assert {c["name"] for c in data["checks"]} >= {"manifest", "vectors", "lexical", "watcher"}
    empty_chroma(indexed)
    bad = run_kb("doctor", "--workspace", indexed)
    assert (
        bad.returncode == 1 and "problem  vectors" in bad.stdout and "fix: kb doctor --repair" in bad.stdout
    )
    fixed = run_kb("doctor", "--repair", "--workspace", indexed)
    assert fixed.returncode == 0 and "repaired vectors" in fixed.stdout, fixed.stdout + fixed.stderr
    assert run_kb("doctor", "--workspace", indexed).returncode == 0


@pytest.mark.embedded_only  # on a server: tests/test_store_server.py (a vanished collection is refilled)
def test_search_rebuilds_a_vector_index_it_cannot_open(small: Path) -> None:
    (small / ".workos/.kb/chroma/chroma.sqlite3").write_bytes(b"this is not a database" * 100)
    forget_client(small / ".workos/.kb/chroma")
    emb = FakeEmbedder()
    with KnowledgeBase.open(small, embedder=emb) as kb:
        assert kb.search("Ada owns billing", k=1, mode="dense")[0].path == ".workos/context/team.md"
        assert_no_chunk_embedded(kb, emb, "Ada owns billing")
    (damaged,) = [c for c in doctor(small).problems]  # the unreadable copy, set aside for inspection
    assert damaged.name == "damaged" and damaged.fix == "kb doctor --repair --remove-damaged deletes them"
