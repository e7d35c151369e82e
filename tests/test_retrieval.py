"""Hybrid retrieval: the BM25 side stays equal to the files, fusion, filters, folding, modes."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from kb import KnowledgeBase
from kb.answer.retrieval import Filters, fuse, near_duplicate
from kb.errors import KbError
from kb.index.lexical import analyze
from kb.testing import FakeEmbedder

ROOT = Path(__file__).resolve().parents[1]

NOTIF = "projects/prds/notifications.md"
QUESTIONS = ROOT / "benchmarks/questions/sample-workspace.jsonl"


def bm25_paths(kb: KnowledgeBase, query: str, k: int = 10) -> list[str]:
    return [h.path for h in kb.search(query, k=k, mode="bm25")]


def test_analyzer_stems_and_drops_stop_words() -> None:
    assert analyze("The notifications are paginated") == ["notif", "pagin"]
    assert analyze("Paginating notification") == ["pagin", "notif"]
    assert analyze("AIP-158 page_token") == ["aip", "158", "page_token"]


def test_bm25_side_follows_every_change(workspace: Path) -> None:
    kb = KnowledgeBase.open(workspace, embedder=FakeEmbedder())
    kb.index()
    ctx = workspace / ".workos/context"
    (ctx / "zebra.md").write_text("# Zebra\n\nThe quokkafish service pages through results.\n")
    kb.index()
    assert bm25_paths(kb, "quokkafish") == [".workos/context/zebra.md"]
    # edit: the old word disappears, the new one appears
    (ctx / "zebra.md").write_text("# Zebra\n\nThe platypuscrab service pages through results.\n")
    kb.index()
    assert bm25_paths(kb, "quokkafish") == []
    assert bm25_paths(kb, "platypuscrab") == [".workos/context/zebra.md"]
    # rename: found under the new path only
    (ctx / "zebra.md").rename(ctx / "okapi.md")
    kb.index()
    assert bm25_paths(kb, "platypuscrab") == [".workos/context/okapi.md"]
    # delete
    (ctx / "okapi.md").unlink()
    kb.index()
    assert bm25_paths(kb, "platypuscrab") == []
    manifest, _ = kb.engine.ready()
    from kb.index import lexical

    assert lexical.in_step(manifest.db)
    (orphans,) = manifest.db.execute(
        "SELECT count(*) FROM sections s WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.path = s.path)"
    ).fetchone()
    assert orphans == 0


def test_lexical_index_is_rebuilt_from_an_old_manifest_without_embedding(workspace: Path) -> None:
    emb = FakeEmbedder()
    KnowledgeBase.open(workspace, embedder=emb).index()
    db = sqlite3.connect(workspace / ".workos/.kb/manifest.sqlite3")
    db.executescript(
        "DROP TRIGGER sections_fts_ad; DROP TABLE sections_fts_vocab; DROP TABLE sections_fts;"
        "DROP TABLE sections; DELETE FROM meta WHERE key='lexical_version';"
    )
    db.close()
    emb2 = FakeEmbedder()
    kb = KnowledgeBase.open(workspace, embedder=emb2)
    assert bm25_paths(kb, "notifications retention digest")[:3]
    assert NOTIF in bm25_paths(kb, "notifications")
    assert emb2.calls == [], "rebuilding the BM25 side embeds nothing"


def test_hybrid_finds_exact_identifiers_dense_misses(indexed: Path) -> None:
    """An error code or service id is a lexical fact: BM25 carries it into the hybrid ranking."""
    kb = KnowledgeBase.open(indexed)
    dense = kb.search("INC-2024-031", k=3, mode="dense")
    assert not any("INC-2024-031" in h.text for h in dense), "premise: the embedding does not know the id"
    hybrid = kb.search("INC-2024-031", k=3)
    assert hybrid and "INC-2024-031" in hybrid[0].text


def test_hybrid_is_at_least_as_good_as_each_side_on_the_sample_questions(indexed: Path) -> None:
    kb = KnowledgeBase.open(indexed)
    hybrid = kb.evaluate(QUESTIONS, k=5)
    dense = kb.evaluate(QUESTIONS, k=5, mode="dense")
    bm25 = kb.evaluate(QUESTIONS, k=5, mode="bm25")
    assert hybrid.questions >= 30
    assert hybrid.hit_at_k >= max(dense.hit_at_k, bm25.hit_at_k)
    assert hybrid.mrr >= bm25.mrr
    assert hybrid.hit_at_k >= 0.97


def test_filters_by_source_type_and_path(indexed: Path) -> None:
    kb = KnowledgeBase.open(indexed)
    prd = kb.search("who owns the notifications service", k=10, source_type="prd")
    assert prd and {h.source_type for h in prd} == {"prd"}
    ctx = kb.search("notifications", k=10, source_type=["context"], mode="bm25")
    assert ctx and {h.source_type for h in ctx} == {"context"}
    only = kb.search("retention", k=10, path="projects/prds/notif*")
    assert only and {h.path for h in only} == {NOTIF}
    assert kb.search("retention", k=5, path="nowhere/*") == []
    unfiltered = kb.ask("How long are notifications kept?")
    assert any(c.path == NOTIF for c in unfiltered.citations), "without the filter the PRD answers"
    answer = kb.ask("How long are notifications kept?", source_type="context")
    assert not answer.abstained and answer.citations, "the context files answer it too"
    assert all(c.path.startswith(".workos/context/") for c in answer.citations)
    with pytest.raises(KbError, match="Unknown source type 'prds'"):
        kb.search("x", source_type="prds")
    with pytest.raises(KbError, match="Unknown retrieval mode"):
        kb.search("x", mode="sparse")


def test_near_duplicate_sources_are_folded_into_one_hit(indexed: Path) -> None:
    shutil.copy(indexed / NOTIF, indexed / ".workos/context/notifications-copy.md")
    kb = KnowledgeBase.open(indexed)
    kb.index()
    hits = kb.search("notification retention period", k=5)
    texts = [" ".join(h.text.split()) for h in hits]
    assert len(texts) == len(set(texts)), "the same text is shown once"
    folded = [h for h in hits if h.also_in]
    assert folded, "the copy is reported on the hit it was folded into"
    assert {folded[0].path, *folded[0].also_in} == {NOTIF, ".workos/context/notifications-copy.md"}
    assert "also_in" in folded[0].to_dict()


def test_fuse_combines_cosine_and_bm25_on_absolute_scales() -> None:
    out = fuse([("a", 0.9), ("b", 0.5)], [("b", 12.0), ("c", 2.0)], lexical_max=20.0, weight=0.5)
    scores = {s.chunk_id: round(s.score, 6) for s in out}
    # c was not a dense candidate: it gets the lowest dense candidate's cosine; a matched no query term: 0
    assert scores == {"a": 0.45, "b": 0.55, "c": 0.3}
    assert [s.chunk_id for s in out] == ["b", "a", "c"]
    # a lone, weak lexical match stays weak (min-max normalisation would have made it a perfect 1.0)
    lone = fuse([("x", 0.8), ("y", 0.6)], [("y", 1.0)], lexical_max=30.0, weight=0.5)
    assert lone[0].chunk_id == "x"
    assert near_duplicate("The quick brown fox.", "the quick  brown fox")
    assert not near_duplicate("The quick brown fox.", "A slow green turtle.")
    assert not Filters.make(None, None)
    assert Filters.make("context,prd", "./projects/*").paths == ("projects/*",)


def test_llama_index_retriever_returns_cited_nodes(indexed: Path) -> None:
    from llama_index.core.retrievers import BaseRetriever

    retriever = KnowledgeBase.open(indexed).as_retriever(k=3, source_type="prd")
    assert isinstance(retriever, BaseRetriever)
    nodes = retriever.retrieve("How should we paginate the notifications API?")
    assert nodes and nodes[0].node.metadata["path"] == NOTIF
    m = nodes[0].node.metadata
    lines = (indexed / m["path"]).read_text().splitlines()[m["start_line"] - 1 : m["end_line"]]
    assert " ".join(nodes[0].node.get_content().split()) in " ".join(" ".join(lines).split())


class KeywordReranker:
    """A stand-in cross-encoder: prefers passages containing a marker word (proves the stage re-orders)."""

    def __init__(self, word: str) -> None:
        self.word, self.seen = word, 0

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.seen += len(texts)
        return [1.0 if self.word in t.lower() else 0.0 for t in texts]


def test_reranker_stage_reorders_fused_candidates(indexed: Path) -> None:
    plain = KnowledgeBase.open(indexed).search("notifications", k=5)
    target = next(
        h for h in KnowledgeBase.open(indexed).search("notifications", k=30) if "digest" in h.text.lower()
    )
    assert plain[0].chunk_id != target.chunk_id
    rr = KeywordReranker("digest")
    hits = KnowledgeBase.open(indexed, reranker=rr).search("notifications", k=5)
    assert rr.seen >= 5 and "digest" in hits[0].text.lower()


def test_reranker_setting_errors_say_what_to_do(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_RERANKER", "colbert:foo")
    with pytest.raises(KbError, match="Unknown reranker 'colbert:foo'. Available: 'cross-encoder"):
        KnowledgeBase.open(indexed).search("notifications")
    monkeypatch.setenv("KB_RERANKER", "cross-encoder:/nonexistent/model")
    with pytest.raises(KbError, match="/nonexistent/model not found"):
        KnowledgeBase.open(indexed).search("notifications")


def test_a_path_filter_over_thousands_of_sources_keeps_bm25_results_and_speed() -> None:
    """A source-type filter on a big workspace passes every allowed path (the team's own sources: all its
    PRDs). The filtered BM25 query returns exactly the unfiltered ranking restricted to those paths, takes no
    more than a small multiple of the unfiltered one (it once ran the MATCH once per allowed section: 50x
    slower at 1,000 paths), and has no limit on the number of paths (SQLite allows 32,766 parameters)."""
    import sqlite3
    import time
    from types import SimpleNamespace

    from kb.index import lexical

    db = sqlite3.connect(":memory:")
    db.executescript(
        "CREATE TABLE sources (path TEXT PRIMARY KEY);"
        "CREATE TABLE chunks (id TEXT PRIMARY KEY, path TEXT, ordinal INTEGER, heading TEXT);"
    )
    lexical.ensure_schema(db)
    words = "ledger cursor page tenant quota retry budget latency export alert".split()
    paths = [f"projects/prds/n{i:04d}.md" for i in range(2000)]
    for i, path in enumerate(paths):
        text = " ".join(words[(i + j) % len(words)] for j in range(1 + i % 7))
        db.execute("INSERT INTO sources VALUES (?)", (path,))
        db.execute("INSERT INTO chunks VALUES (?, ?, 0, 'Summary')", (f"c{i}", path))
        lexical.put(db, path, [SimpleNamespace(path=path, heading="Summary", text=text, embed_text=text)])
    allowed = set(paths[::2])
    question = "cursor page export"
    everything = lexical.query(db, question, 5000, sections=5000)
    expected = [(c, s) for c, s in everything if f"projects/prds/n{int(c[1:]):04d}.md" in allowed][:40]
    assert lexical.query(db, question, 40, sorted(allowed), sections=40) == expected
    assert len(expected) == 40

    def timed(paths: list[str] | None) -> float:
        t = time.perf_counter()
        lexical.query(db, question, 40, paths, sections=40)
        return time.perf_counter() - t

    unfiltered = min(timed(None) for _ in range(3))
    filtered = min(timed(sorted(allowed)) for _ in range(3))
    assert filtered < 5 * unfiltered + 0.02, (filtered, unfiltered)
    many = sorted(allowed) + [f"projects/prds/missing-{i}.md" for i in range(40000)]
    assert lexical.query(db, question, 40, many, sections=40) == expected


def test_term_counts_are_counted_once_per_version_of_the_index(tmp_path: Path) -> None:
    """BM25's section counts (FTS5 walks a term's whole posting list to count it) are remembered by a
    long-lived reader, and never outlive a change: another process's commit, or this connection's own
    write, makes the next search count again, with the new figures."""
    from types import SimpleNamespace

    from kb.index import lexical

    path = tmp_path / "m.sqlite3"
    reader, writer = sqlite3.connect(path), sqlite3.connect(path)
    for db in (reader, writer):
        db.execute("PRAGMA journal_mode=WAL")
    writer.executescript(
        "CREATE TABLE IF NOT EXISTS sources (path TEXT PRIMARY KEY);"
        "CREATE TABLE IF NOT EXISTS chunks (id TEXT PRIMARY KEY, path TEXT, ordinal INTEGER, heading TEXT);"
    )
    lexical.ensure_schema(writer)

    def put(db: sqlite3.Connection, i: int, text: str) -> None:
        p = f"notes/n{i}.md"
        db.execute("INSERT INTO sources VALUES (?)", (p,))
        db.execute("INSERT INTO chunks VALUES (?, ?, 0, 'Summary')", (f"c{i}", p))
        lexical.put(db, p, [SimpleNamespace(path=p, heading="Summary", text=text, embed_text=text)])
        db.commit()

    for i in range(6):
        put(writer, i, "cursor pagination" if i % 2 else "ledger export")
    counted: list[str] = []
    reader.set_trace_callback(lambda sql: counted.append(sql) if "sections_fts_vocab" in sql else None)
    stats = lexical.TermStats(reader)
    question = "cursor ledger"

    assert stats(["cursor", "ledger", "absent"]) == (6, {"cursor": 3, "ledger": 3})
    weights = lexical.idf_weights(reader, question, stats)
    hits = lexical.query(reader, question, 10, stats=stats)
    assert len(counted) == 1, "the same terms were counted again in the same version"
    assert weights == lexical.idf_weights(reader, question) and hits == lexical.query(reader, question, 10)

    put(writer, 6, "cursor cursor")  # another connection commits
    assert stats(["cursor", "ledger"]) == (7, {"cursor": 4, "ledger": 3})
    assert lexical.idf_weights(reader, question, stats) == lexical.idf_weights(reader, question)
    put(reader, 7, "ledger")  # this connection's own write
    assert stats(["cursor", "ledger"]) == (8, {"cursor": 4, "ledger": 4})
    assert lexical.query(reader, question, 10, stats=stats) == lexical.query(reader, question, 10)
