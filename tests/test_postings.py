"""The in-memory BM25 of a long-lived reader (kb.index.postings) gives FTS5's own results, and follows every
change another process commits, reading only what changed."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from kb.index import lexical, postings
from kb.index.manifest import ChunkRow, Manifest, SourceRow

# Tokens FTS5's unicode61 splits or keeps differently from a plain ASCII word: an underscore (a separator to
# FTS5, a word character to Python), letters with diacritics, CJK, a letter Unicode added after 6.1 (Adlam,
# Unicode 9: a separator to FTS5's tables), digits.
ODD = ["foo_bar", "naïve", "日本語", "x\U0001e922y", "café_au_lait", "v2", "2024", "ǆemal"]


def words(rng: random.Random, n: int) -> list[str]:
    vocab = [f"w{i}" for i in range(120)] + ODD
    weights = [1 / (r + 1) for r in range(len(vocab))]
    return rng.choices(vocab, weights, k=n)


def put(m: Manifest, path: str, sections: list[str], when: float | None = None) -> None:
    chunks = [
        ChunkRow(f"{path}#{i}", path, i, f"h{i}", i + 1, i + 1, f"Doc > S{i // 2}", text, None, text)
        for i, text in enumerate(sections)
    ]
    with m.db:
        m.put_source(
            SourceRow(path, str(hash(tuple(sections))), 1, 1, "md", "team", None, {}, when or time.time()),
            chunks,
        )


def fts5_only(m: Manifest, q: str, k: int, sections: int, paths: list[str] | None = None) -> list:
    return lexical.query(m.db, q, k, paths, sections)


def in_memory(m: Manifest, q: str, k: int, sections: int, paths: list[str] | None = None) -> list:
    return lexical.query(m.db, q, k, paths, sections, m.term_stats, m.postings)


def from_memory(m: Manifest, q: str) -> bool:
    """Whether the in-memory arrays answered ``q`` (FTS5 ran no MATCH)."""
    ran: list[str] = []
    m.db.set_trace_callback(lambda sql: ran.append(sql) if "MATCH" in sql else None)
    try:
        in_memory(m, q, 10, 10)
    finally:
        m.db.set_trace_callback(None)
    return not ran


def one_token_each(q: str) -> bool:
    return all(postings.one_token(w) for w in lexical.analyze(q))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[Manifest, Manifest, random.Random]]:
    rng = random.Random(5)
    writer = Manifest(tmp_path / "manifest.sqlite3")  # another process's connection
    for f in range(40):
        put(writer, f"notes/n{f:02d}.md", [" ".join(words(rng, rng.randint(3, 40))) for _ in range(6)])
    reader = Manifest(tmp_path / "manifest.sqlite3")
    reader.postings.build(wait=True)
    yield reader, writer, rng
    reader.close()
    writer.close()


def queries(rng: random.Random, n: int) -> list[str]:
    out = [" ".join(words(rng, rng.randint(1, 6))) for _ in range(n)]
    return out + ODD + ["w0 foo_bar", "naïve w3 日本語", "x\U0001e922y w1", "w0 w1 w2 w3"]


def same_as_fts5(m: Manifest, qs: list[str], paths: list[str] | None = None) -> None:
    for q in qs:
        # Bit for bit: the same sums of the same doubles, and FTS5's own order (score, path, position).
        assert in_memory(m, q, 1000, 1000, paths) == fts5_only(m, q, 1000, 1000, paths), q
        assert from_memory(m, q) == one_token_each(q), q


def test_in_memory_bm25_ranks_exactly_as_fts5(index: tuple[Manifest, Manifest, random.Random]) -> None:
    reader, _, rng = index
    assert reader.postings.ready and reader.postings.sections_read == 40 * 3
    qs = queries(rng, 60)
    same_as_fts5(reader, qs)
    same_as_fts5(reader, qs, [f"notes/n{f:02d}.md" for f in range(0, 40, 3)])  # a metadata filter
    for q in qs:  # a cut inside the matches: which of tied sections make it is FTS5's choice too
        assert [s for _, s in in_memory(reader, q, 8, 4)] == [s for _, s in fts5_only(reader, q, 8, 4)], q
    # The odd tokens are split as FTS5 splits them (this one is two tokens to FTS5 and one to Python).
    assert postings.fts5_terms("w1 foo_bar naïve") == ["w1", "foo", "bar", "naïve"]
    assert sum(map(one_token_each, qs)) >= 60  # most queries were answered from memory


def test_in_memory_bm25_follows_another_process_reading_only_what_changed(
    index: tuple[Manifest, Manifest, random.Random],
) -> None:
    reader, writer, rng = index
    qs = queries(rng, 20)
    same_as_fts5(reader, qs)
    read = reader.postings.sections_read
    put(writer, "notes/n05.md", ["w1 w2 naïve", "w3 foo_bar", "w1"])  # an edit
    same_as_fts5(reader, qs)
    assert reader.postings.sections_read == read + 2  # only that file's sections (two headings) were read
    with writer.db:
        writer.remove_source("notes/n39.md")  # the highest rowids go, and the next file's reuse them
    put(writer, "notes/zz.md", ["w7 w7 w7", "w0 日本語", "w9", "w9 w9"])
    same_as_fts5(reader, qs)
    assert reader.postings.sections_read == read + 2 + 2
    put(reader, "notes/n07.md", ["w4 w5 w6"])  # this connection's own write
    same_as_fts5(reader, qs)
    assert reader.postings.sections_read == read + 2 + 2 + 1
    for n in range(postings.MAX_DELTAS + 4):  # past the number of segments at which they are merged
        put(writer, f"notes/n{n + 10:02d}.md", [" ".join(words(rng, 12)), "w1 w1"])
        in_memory(reader, "w1", 10, 10)
    same_as_fts5(reader, qs)
    assert reader.postings.sections_read == read + 2 + 2 + 1 + postings.MAX_DELTAS + 4  # one heading each
    assert reader.postings.ready


def test_sections_changed_behind_the_sources_stamp_are_answered_by_fts5(
    index: tuple[Manifest, Manifest, random.Random],
) -> None:
    """Only a writer bypassing the manifest could do this; the answer is still FTS5's, and the arrays go."""
    reader, writer, _ = index
    rows = writer.db.execute(
        "SELECT path, heading, text, embed_text FROM chunks WHERE path='notes/n00.md' ORDER BY ordinal"
    ).fetchall()
    with writer.db:  # the same sections again, under new rowids; the source's stamp unchanged
        lexical.put(
            writer.db,
            "notes/n00.md",
            [SimpleNamespace(path=p, heading=h, text=t, embed_text=e) for p, h, t, e in rows],
        )
    for q in ("w0 w1 w2", "w3", "w5 w8"):
        assert in_memory(reader, q, 1000, 1000) == fts5_only(reader, q, 1000, 1000)
    assert not reader.postings.ready  # forgotten; built again by a reader that keeps searching


def test_a_long_lived_knowledge_base_builds_it_and_answers_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kb import KnowledgeBase
    from kb.testing.workspaces import FakeEmbedder  # a stand-in: what is tested here is BM25, not vectors

    monkeypatch.setattr(postings, "BUILD_AFTER_S", 0.0)
    rng = random.Random(3)
    ws = tmp_path / "ws"
    (ws / ".workos").mkdir(parents=True)
    (ws / "projects/prds").mkdir(parents=True)
    for f in range(12):
        body = "\n\n".join(f"## Part {j}\n\n{' '.join(words(rng, 25))}." for j in range(4))
        (ws / f"projects/prds/p{f}.md").write_text(f"# PRD {f}\n\n{body}\n")
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kb.index()
        before = [h.chunk_id for h in kb.search("w3 w17 naïve", k=8, mode="bm25")]
        manifest = kb.engine.reader()
        manifest.postings.build(wait=True)
        assert [h.chunk_id for h in kb.search("w3 w17 naïve", k=8, mode="bm25")] == before
        assert manifest.postings.ready
        (ws / "projects/prds/p0.md").write_text("# PRD 0\n\n## Part 0\n\nw3 w17 w17 naïve naïve.\n")
        hits = kb.search("w3 w17 naïve", k=8, mode="bm25")
        assert hits[0].path == "projects/prds/p0.md"  # the edit, re-indexed before the search, is seen
