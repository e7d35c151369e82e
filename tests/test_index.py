"""Incremental, idempotent, crash-safe indexing with the real model and a real Chroma."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kb import IndexLockedError, KnowledgeBase
from kb.testing import CountingEmbedder, FakeEmbedder, run_kb

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


def test_size_and_mtime_unchanged_means_not_read(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof that such a file is not read: its content is changed behind kb's back, keeping its size and
    mtime, and the index keeps the old content; the reads are counted too. Then the size alone, and the mtime
    alone, each make kb read it."""
    import kb.index.indexer

    reads: list[str] = []
    real_read = kb.index.indexer.read_candidate

    def counting_read(cand: object, max_bytes: int) -> bytes:
        reads.append(cand.path)  # type: ignore[attr-defined]
        return real_read(cand, max_bytes)  # type: ignore[arg-type]

    monkeypatch.setattr(kb.index.indexer, "read_candidate", counting_read)
    target = indexed / NOTIF
    st = target.stat()
    swapped = target.read_text().replace("cursor-paginated", "walrus-paginated", 1)
    assert len(swapped.encode()) == st.st_size
    target.write_text(swapped)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with KnowledgeBase.open(indexed) as kb_:
        report = kb_.index()
        assert reads == [] and report.unchanged == 7 and not report.updated
        assert kb_.search("walrus", k=3, mode="bm25") == [], "the old content is still indexed: not read"
    # Same mtime, one byte more: read.
    target.write_text(swapped + "\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with KnowledgeBase.open(indexed) as kb_:
        assert kb_.index().updated == [NOTIF] and reads == [NOTIF]
        assert any("walrus-paginated" in h.text for h in kb_.search("walrus", k=3, mode="bm25"))
    # Same size, another mtime: read (and, the content being the same, only touched).
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with KnowledgeBase.open(indexed) as kb_:
        report = kb_.index()
        assert reads == [NOTIF, NOTIF] and report.unchanged == 7 and report.chunks_embedded == 0


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
    ids_before = kb.engine.ready()[0].all_chunk_ids()
    written: list[str] = []
    upsert = kb.engine.store.upsert
    kb.engine.store.upsert = lambda ids, *rest: (written.extend(ids), upsert(ids, *rest))[1]  # type: ignore[method-assign]
    report = kb.index()
    assert report.updated == [NOTIF]
    assert 1 <= report.chunks_embedded <= 2 < chunks_before, "only the edited section is re-embedded"
    assert set(written) == kb.engine.ready()[0].all_chunk_ids() - ids_before, "only new chunks are written"
    hits = kb.search("zanzibarquokka flag pins a cursor to a snapshot", k=3)
    assert hits[0].path == NOTIF and "zanzibarquokka" in hits[0].text
    lines = (indexed / NOTIF).read_text().splitlines()
    assert "zanzibarquokka" in "\n".join(lines[hits[0].start_line - 1 : hits[0].end_line])
    ids, chroma = consistent(kb)
    assert ids == chroma


@pytest.mark.embedded_only  # reads the collection's settings from the folder
def test_an_older_collection_is_searched_with_kb_s_ef_search(indexed: Path) -> None:
    import chromadb

    from kb.backends.store import EF_SEARCH

    def ef_search() -> int:
        client = chromadb.PersistentClient(path=str(indexed / ".workos/.kb/chroma"))
        (only,) = client.list_collections()
        return int(client.get_collection(only.name).configuration_json["hnsw"]["ef_search"])

    client = chromadb.PersistentClient(path=str(indexed / ".workos/.kb/chroma"))
    (only,) = client.list_collections()
    assert ef_search() == EF_SEARCH > 100  # kb's own collections are made with it
    client.get_collection(only.name).modify(configuration={"hnsw": {"ef_search": 100}})  # an older kb's
    assert ef_search() == 100
    with KnowledgeBase.open(indexed) as kb:
        assert kb.search("usage export", k=3)
    assert ef_search() == EF_SEARCH


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


@contextlib.contextmanager
def lock_held_by_another_process(ws: Path, seconds: float = 60) -> Iterator[None]:
    """Another process holds the index's write lock (and recorded pid 4242 in it) while in ``with``, for at
    most ``seconds``."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import fcntl, sys, time
            fh = open({str(ws / ".workos/.kb/write.lock")!r}, 'a+')
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0); fh.truncate(); fh.write('4242'); fh.flush()
            print('locked', flush=True)
            time.sleep({seconds})
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_second_writer_is_refused(indexed: Path) -> None:
    started = time.monotonic()
    with (
        lock_held_by_another_process(indexed),
        pytest.raises(IndexLockedError, match=r"pid 4242\).*\(waited 1 s\)"),
    ):
        KnowledgeBase.open(indexed, lock_wait=1).index()
    assert time.monotonic() - started >= 1


def test_kb_index_waits_for_a_writer_that_finishes_within_lock_wait(indexed: Path) -> None:
    """A search's refresh holds the write lock for a moment: kb index waits for it (up to ``lock_wait``, 10 s
    by default) instead of failing with exit 4, and then does its own run."""
    (indexed / ".workos/context/later.md").write_text("# Later\n\nThe audit log is kept for 400 days.\n")
    with lock_held_by_another_process(indexed, seconds=1.5):
        started = time.monotonic()
        report = KnowledgeBase.open(indexed).index()
        waited = time.monotonic() - started
    assert report.added == [".workos/context/later.md"] and waited >= 0.5, (report, waited)


def test_kb_index_exit_codes_2_and_4_from_the_cli(indexed: Path) -> None:
    """README: 2 usage error, 4 the index is locked by another kb process; one line each, no traceback."""
    usage = run_kb("index", "--no-such-option", "--workspace", indexed)
    assert usage.returncode == 2, usage.stderr
    assert "No such option: --no-such-option" in usage.stderr and "Traceback" not in usage.stderr
    with lock_held_by_another_process(indexed):
        locked = run_kb("index", "--json", "--workspace", indexed, env={"KB_LOCK_WAIT": "0.2"})
    assert locked.returncode == 4, locked.stderr
    lines = locked.stderr.strip().splitlines()
    assert len(lines) == 1 and "pid 4242" in lines[0] and "try again" in lines[0], locked.stderr
    assert locked.stdout == ""
    again = run_kb("index", "--json", "--workspace", indexed)  # the lock released: 0, nothing to do
    assert again.returncode == 0 and json.loads(again.stdout)["chunks_embedded"] == 0, again.stderr


# Every ordering point of one run (kb/index/indexer.py): a child process indexes and SIGKILLs itself there.
# Before the manifest commits, the previous state must answer; from the commit on, the new one; the next run
# must leave Chroma holding exactly the manifest's chunks.
KILLER = """
import os, signal, sys
from kb import KnowledgeBase
from kb.backends.store import ChromaCollection  # both stores' writes (embedded folder, Chroma server)
from kb.index.indexer import Indexer
from kb.index.manifest import Manifest

point = sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(cls, name):  # kill as soon as cls.name has returned
    original = getattr(cls, name)
    def wrapper(self, *a, **k):
        original(self, *a, **k)
        die()
    setattr(cls, name, wrapper)

def before(cls, name, when=lambda *a: True):  # kill when cls.name is called
    original = getattr(cls, name)
    def wrapper(self, *a, **k):
        if when(*a):
            die()
        return original(self, *a, **k)
    setattr(cls, name, wrapper)

if point == "after-upsert":      # new chunks are in Chroma; the manifest has not committed
    after(ChromaCollection, "upsert")
elif point == "before-commit":   # every manifest row written, inside the uncommitted transaction
    before(Manifest, "stamp")
elif point == "after-commit":    # the manifest committed; stale chunks still in Chroma
    before(ChromaCollection, "delete", lambda ids: len(ids) > 0)
elif point == "after-delete":    # stale chunks deleted; reconcile not run
    before(Indexer, "reconcile")
elif point == "before-prune":    # reconciled; the vector cache not pruned
    before(Manifest, "prune_vectors")

def progress(stage, done, total):
    if point == "mid-embed" and stage == "embed" and done >= 32:  # one batch of 32 embedded
        die()

KnowledgeBase.open(sys.argv[1]).index(progress=progress)
sys.exit(3)  # the kill point was never reached: the test must not pass
"""

GONE = "projects/prds/usage-export.md"
OLD_SLO = "p95 latency SLO of 150 ms"
NEW_SLO = "The walrusbanana latency SLO is 175 ms at the edge gateway."
KILL_POINTS = {  # point -> which state answers until the next run
    "mid-embed": "previous",
    "after-upsert": "previous",
    "before-commit": "previous",
    "after-commit": "new",
    "after-delete": "new",
    "before-prune": "new",
}


def edit_for_kill_test(ws: Path) -> None:
    """A PRD chunk replaced (its old chunk becomes stale), a file deleted, a 40-section file added."""
    text = (ws / NOTIF).read_text()
    old_line = next(line for line in text.splitlines() if OLD_SLO in line)
    (ws / NOTIF).write_text(text.replace(old_line, f"- {NEW_SLO}"))
    (ws / GONE).unlink()
    (ws / ".workos/context/glossary.md").write_text(
        "# Glossary\n\n"
        + "\n\n".join(f"## Term {i}\n\nTerm {i} means thing number {i} in the ledger." for i in range(40))
    )


def answers_from(kb: KnowledgeBase) -> str:
    """Which state the index answers from, "previous" or "new", both sides (BM25 and dense) included; an
    AssertionError on a mix."""
    facts = {
        "old chunk": any(OLD_SLO in h.text for h in kb.search("p95 latency SLO of 150 ms", k=10)),
        "new chunk, bm25": [h.path for h in kb.search("walrusbanana", k=3, mode="bm25")] == [NOTIF],
        "new chunk, dense": any("walrusbanana" in h.text for h in kb.search(NEW_SLO, k=3, mode="dense")),
        "deleted file": GONE in {h.path for h in kb.search("asynchronous usage export jobs CSV", k=5)},
        "added file": ".workos/context/glossary.md"
        in {h.path for h in kb.search("Term 5 means thing number 5 in the ledger", k=5)},
    }
    previous = {
        "old chunk": True,
        "new chunk, bm25": False,
        "new chunk, dense": False,
        "deleted file": True,
        "added file": False,
    }
    if facts == previous:
        return "previous"
    assert facts == {k: not v for k, v in previous.items()}, (
        f"neither the previous nor the new state: {facts}"
    )
    return "new"


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_run_leaves_previous_or_new_state_and_next_run_reconciles(
    indexed: Path, point: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kb")
    edit_for_kill_test(indexed)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(indexed), point], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    kb = KnowledgeBase.open(indexed, refresh=False)  # the state the kill left, not refreshed before searching
    assert answers_from(kb) == KILL_POINTS[point]
    ids, chroma = consistent(kb)
    assert ids <= chroma, "every chunk the manifest knows is in Chroma at every instant"
    kb.close()
    # The next run finishes the job: no duplicate, no orphan.
    kb, emb = open_counting(indexed)
    report = kb.index()
    if KILL_POINTS[point] == "previous":
        assert report.added == [".workos/context/glossary.md"] and report.updated == [NOTIF]
        assert report.removed == [GONE]
    else:
        assert not (report.added or report.updated or report.removed) and report.chunks_embedded == 0
    if point == "after-commit":  # the first query's store check, or this run, removes the stale chunks
        logged = [r.getMessage() for r in caplog.records if "index repair" in r.getMessage()]
        repairs = report.repaired + logged
        assert any("orphan" in line for line in repairs), "the stale chunks left in Chroma are removed"
    ids, chroma = consistent(kb)
    assert ids == chroma
    manifest, _ = kb.engine.ready()
    rows = manifest.db.execute(
        "SELECT path, ordinal, count(*) FROM chunks GROUP BY path, ordinal HAVING count(*) > 1"
    ).fetchall()
    assert rows == []
    assert answers_from(kb) == "new"
    if point == "mid-embed":
        assert report.chunks_embedded <= 41 - 32, "vectors embedded before the kill are reused"
    else:
        assert report.chunks_embedded == 0, "every vector was cached before the kill"
    kb.close()


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


def test_closing_a_knowledge_base_releases_its_files(indexed: Path, tmp_path: Path) -> None:
    """A process that opens and closes many indexes (a notebook, an agent harness, this suite) keeps no file
    descriptor of the closed ones: Chroma shares one system per folder and closes it with its last client
    (each open once kept ~11 descriptors until the process ended). A second KnowledgeBase on the same folder
    keeps working when the first closes."""
    import shutil

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    copies = []
    for i in range(4):
        copies.append(tmp_path / f"copy{i}")
        shutil.copytree(indexed, copies[-1])
    with KnowledgeBase.open(copies[0]) as kb:  # imports and caches filled once
        kb.search("pagination", k=1)
    before = descriptors()
    for ws in copies[1:]:
        with KnowledgeBase.open(ws) as kb:
            assert kb.search("How should we paginate the notifications API?", k=1)[0].path == NOTIF
    assert descriptors() - before <= 3, f"{descriptors() - before} descriptors left open by 3 closed indexes"
    with KnowledgeBase.open(indexed) as first:
        with KnowledgeBase.open(indexed) as second:
            assert second.search("pagination", k=1)
        assert first.search("How should we paginate the notifications API?", k=1)[0].path == NOTIF
