"""Incremental, idempotent, crash-safe indexing with the real model and a real Chroma."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kb import IndexLockedError, KnowledgeBase
from kb.testing import CountingEmbedder, FakeEmbedder

NOTIF = "projects/prds/notifications.md"


def open_counting(ws: Path, **overrides: object) -> tuple[KnowledgeBase, CountingEmbedder]:
    real = KnowledgeBase.open(ws, **overrides).embedder
    counting = CountingEmbedder(real)
    return KnowledgeBase.open(ws, embedder=counting, **overrides), counting


def consistent(kb: KnowledgeBase) -> tuple[set[str], set[str]]:
    """(manifest chunk ids, Chroma ids) — they must be equal."""
    manifest, store = kb.engine.ready()
    return manifest.all_chunk_ids(), store.ids()


def test_first_index_then_nothing_changed(workspace: Path) -> None:
    kb, emb = open_counting(workspace)
    first = kb.index()
    assert len(first.added) == 7 and not first.skipped
    assert first.chunks_embedded == first.chunks_total == len(emb.calls) > 50
    kb.close()
    kb, emb = open_counting(workspace)
    again = kb.index()
    assert again.chunks_embedded == 0 and emb.calls == []
    assert again.unchanged == 7 and not (again.added or again.updated or again.removed or again.renamed)
    ids, chroma = consistent(kb)
    assert ids == chroma and len(ids) == first.chunks_total


def test_touch_embeds_nothing(indexed: Path) -> None:
    target = indexed / NOTIF
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 5_000_000_000))
    kb, emb = open_counting(indexed)
    report = kb.index()
    assert report.chunks_embedded == 0 and emb.calls == [] and report.unchanged == 7
    assert not report.updated


def test_modified_file_reembeds_only_changed_chunks(indexed: Path) -> None:
    kb, emb = open_counting(indexed)
    chunks_before = len(kb.engine.ready()[0].chunks_of(NOTIF))
    text = (indexed / NOTIF).read_text()
    (indexed / NOTIF).write_text(
        text.replace(
            "## Pagination", "## Pagination\n\nThe zanzibarquokka flag pins a cursor to a snapshot.\n", 1
        )
    )
    kb.close()
    kb, emb = open_counting(indexed)
    report = kb.index()
    assert report.updated == [NOTIF]
    assert 1 <= report.chunks_embedded <= 2 < chunks_before, "only the edited section is re-embedded"
    hits = kb.search("zanzibarquokka flag pins a cursor to a snapshot", k=3)
    assert hits[0].path == NOTIF and "zanzibarquokka" in hits[0].text
    lines = (indexed / NOTIF).read_text().splitlines()
    assert "zanzibarquokka" in "\n".join(lines[hits[0].start_line - 1 : hits[0].end_line])
    ids, chroma = consistent(kb)
    assert ids == chroma


def test_deleted_file_disappears_everywhere(indexed: Path) -> None:
    (indexed / NOTIF).unlink()
    kb, emb = open_counting(indexed)
    report = kb.index()
    assert report.removed == [NOTIF] and report.chunks_embedded == 0
    assert all(h.path != NOTIF for h in kb.search("notifications API cursor pagination", k=20))
    ids, chroma = consistent(kb)
    assert ids == chroma
    assert NOTIF not in {s.path for s in kb.status().sources}


def test_rename_and_move_embed_nothing(indexed: Path) -> None:
    (indexed / "projects/prds/archive").mkdir()
    os.rename(indexed / NOTIF, indexed / "projects/prds/archive/notifs-v1.md")
    kb, emb = open_counting(indexed)
    report = kb.index()
    assert report.renamed == [(NOTIF, "projects/prds/archive/notifs-v1.md")]
    assert report.chunks_embedded == 0 and emb.calls == []
    assert not report.added and not report.removed
    top = kb.search("How should we paginate the notifications API?", k=3)
    assert top[0].path == "projects/prds/archive/notifs-v1.md"
    ids, chroma = consistent(kb)
    assert ids == chroma


def test_chunking_change_rebuilds_without_mixing(indexed: Path) -> None:
    kb, emb = open_counting(indexed, chunk_max_tokens=128)
    report = kb.index()
    assert report.rebuilt
    assert report.chunks_total > 0
    ids, chroma = consistent(kb)
    assert ids == chroma
    store = kb.engine.store.status()
    assert store.collections == [store.collection], "the old settings' collection is dropped"
    # the old settings are refused until reindexed, instead of mixing vectors
    with pytest.raises(Exception, match="kb index"):
        KnowledgeBase.open(indexed).search("pagination")


def test_model_change_rebuilds(indexed: Path, tmp_path: Path) -> None:

    fake = FakeEmbedder()
    kb = KnowledgeBase.open(indexed, embedder=fake)
    report = kb.index()
    assert report.rebuilt and report.chunks_embedded == report.chunks_total == len(fake.calls)
    ids, chroma = consistent(kb)
    assert ids == chroma


def test_second_writer_is_refused(indexed: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import fcntl, sys, time
            fh = open({str(indexed / ".workos/.kb/write.lock")!r}, 'a+')
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0); fh.truncate(); fh.write('4242'); fh.flush()
            print('locked', flush=True)
            time.sleep(30)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockedError, match="pid 4242"):
            KnowledgeBase.open(indexed).index()
    finally:
        holder.kill()
        holder.wait()


KILLER = """
import os, signal, sys
from kb import KnowledgeBase
import kb.index.manifest as manifest
point = sys.argv[2]
if point == "before-commit":
    original = manifest.Manifest.put_source
    def put_source(self, *a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    manifest.Manifest.put_source = put_source
def progress(stage, done, total):
    if point == "mid-embed" and stage == "embed" and done >= 64:
        os.kill(os.getpid(), signal.SIGKILL)
KnowledgeBase.open(sys.argv[1]).index(progress=progress)
"""


@pytest.mark.parametrize("point", ["mid-embed", "before-commit"])
def test_killed_run_leaves_previous_state_and_next_run_completes(indexed: Path, point: str) -> None:
    # change two files and add one, then kill the index run part-way
    (indexed / NOTIF).write_text(
        (indexed / NOTIF).read_text() + "\n## Appendix\n\nThe walrusbanana retention is 9 days.\n"
    )
    extra = indexed / ".workos/context/glossary.md"
    extra.write_text(
        "# Glossary\n\n"
        + "\n\n".join(f"## Term {i}\n\nTerm {i} means thing number {i} in the ledger." for i in range(80))
    )
    proc = subprocess.run([sys.executable, "-c", KILLER, str(indexed), point], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the previous state still answers
    kb = KnowledgeBase.open(indexed)
    assert kb.search("How should we paginate the notifications API?", k=1)[0].path == NOTIF
    assert "glossary" not in {
        h.path.split("/")[-1].split(".")[0] for h in kb.search("Term 5 means thing number 5", k=5)
    }
    assert kb.search("walrusbanana", k=3, mode="bm25") == [], "the BM25 side shows the previous state too"
    kb.close()
    # the next run finishes the job: no duplicate, no orphan
    kb, emb = open_counting(indexed)
    report = kb.index()
    assert report.added == [".workos/context/glossary.md"] and report.updated == [NOTIF]
    ids, chroma = consistent(kb)
    assert ids == chroma
    manifest, _ = kb.engine.ready()
    rows = manifest.db.execute(
        "SELECT path, ordinal, count(*) FROM chunks GROUP BY path, ordinal HAVING count(*) > 1"
    ).fetchall()
    assert rows == []
    assert kb.search("walrusbanana retention", k=1)[0].path == NOTIF
    assert [h.path for h in kb.search("walrusbanana", k=3, mode="bm25")] == [NOTIF]
    if point == "mid-embed":
        assert report.chunks_embedded < 80, "vectors embedded before the kill are reused"


@pytest.mark.embedded_only  # on a server: tests/test_store_server.py (a vanished collection is refilled)
def test_corrupt_chroma_is_rebuilt_from_manifest_without_embedding(indexed: Path) -> None:
    chroma = indexed / ".workos/.kb/chroma/chroma.sqlite3"
    chroma.write_bytes(b"this is not a database" * 100)
    kb, emb = open_counting(indexed)
    report = kb.index()
    assert report.repaired and emb.calls == []
    assert kb.search("How should we paginate the notifications API?", k=1)[0].path == NOTIF
    ids, chroma_ids = consistent(kb)
    assert ids == chroma_ids


def test_corrupt_manifest_gives_clear_error(indexed: Path) -> None:
    manifest = indexed / ".workos/.kb/manifest.sqlite3"
    for extra in ("-wal", "-shm"):
        Path(str(manifest) + extra).unlink(missing_ok=True)
    manifest.write_bytes(b"garbage" * 1000)
    with pytest.raises(Exception, match="kb index"):
        KnowledgeBase.open(indexed).search("pagination")


def test_status_lists_sources(indexed: Path) -> None:
    st = KnowledgeBase.open(indexed).status()
    assert st.sources_count == 7 and st.chunks_count == sum(s.chunks for s in st.sources)
    assert st.last_indexed_at and st.model.startswith("all-MiniLM-L6-v2@")
    assert {s.source_type for s in st.sources} == {"context", "prd"}
    conn = sqlite3.connect(indexed / ".workos/.kb/manifest.sqlite3")
    assert conn.execute("SELECT count(*) FROM sources").fetchone()[0] == 7
