"""The lexical (BM25) side of retrieval: SQLite FTS5 over stemmed section text, kept inside the manifest.

Why FTS5 rather than an in-memory BM25 library: the postings live in the manifest's own SQLite file and change
in the same transaction as the chunks they describe, so the lexical index is incremental (a changed file
rewrites its own rows, nothing else), can never disagree with the manifest after a crash, and costs nothing to
load for a one-shot ``kb ask``. FTS5 ranks with Okapi BM25 (k1 = 1.2, b = 0.75). A reader that keeps searching
adds :mod:`kb.index.postings` (the same scores from in-memory arrays, built from these tables).

The unit of lexical matching is the **section** — the chunks of one file under one heading path, together —
while dense retrieval works on chunks. A chunk is the right unit for an embedding (the model reads 256
tokens), but a term match is evidence about the whole passage a chunk belongs to: on SciFact's train split,
section-level BM25 scores nDCG@10 0.703 against 0.691 for chunk-level (``benchmarks/tune_fusion.py``). Each
chunk of a matching section carries the section's score into the fusion, where the dense score tells the
chunks apart.

Text is analysed the way the published BM25 baseline does it (Lucene's English stop words, Snowball English
stemming, via PyStemmer) before it reaches FTS5, whose own tokenizer then only splits on spaces.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Protocol

from kb.index.postings import K1, TOKENIZER, Postings

ANALYZER_VERSION = "snowball-en-3-sections"

# Lucene's English stop words (the set the published bm25s baseline uses).
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they "
    "this to was will with".split()
)

_WORD = re.compile(r"\w+", re.UNICODE)

# ``sections`` lists (path, heading) pairs; ``sections_fts`` holds their analysed text under the same rowid.
# Rows are written by :func:`put` from the manifest's put_source (inside its transaction); deleting a source
# cascades to its sections, and the trigger removes their FTS rows, so no write path of the manifest can leave
# them out of step.
_DDL = [
    """CREATE TABLE IF NOT EXISTS sections (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL REFERENCES sources(path) ON DELETE CASCADE,
        heading TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sections_path ON sections(path)",
    "CREATE INDEX IF NOT EXISTS chunks_path_heading ON chunks(path, heading)",
    f"CREATE VIRTUAL TABLE IF NOT EXISTS sections_fts USING fts5(head, body, tokenize = '{TOKENIZER}')",
    "CREATE VIRTUAL TABLE IF NOT EXISTS sections_fts_vocab USING fts5vocab(sections_fts, 'row')",
    """CREATE TRIGGER IF NOT EXISTS sections_fts_ad AFTER DELETE ON sections BEGIN
    DELETE FROM sections_fts WHERE rowid = old.id;
END""",
]
_DROP = [
    "DROP TRIGGER IF EXISTS sections_fts_ad",
    "DROP TABLE IF EXISTS sections_fts_vocab",
    "DROP TABLE IF EXISTS sections_fts",
    "DROP TABLE IF EXISTS sections",
    # earlier layouts (chunk-level FTS)
    "DROP TRIGGER IF EXISTS chunks_fts_ai",
    "DROP TRIGGER IF EXISTS chunks_fts_ad",
    "DROP TABLE IF EXISTS chunks_fts_vocab",
    "DROP TABLE IF EXISTS chunks_fts",
]


class ChunkLike(Protocol):
    path: str
    heading: str
    text: str
    embed_text: str


@lru_cache(maxsize=1)
def _stemmer() -> object:
    import Stemmer  # PyStemmer: Snowball stemmers in C

    return Stemmer.Stemmer("english")


def analyze(text: str) -> list[str]:
    """Lower-cased word tokens, stop words removed, Snowball-stemmed."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return list(_stemmer().stemWords(words))  # type: ignore[attr-defined]


@lru_cache(maxsize=8192)
def term_set(text: str) -> frozenset[str]:
    """The distinct :func:`analyze` terms of ``text``, memoised: every search scores the same candidate chunks
    against a new query, and re-tokenising them was a fifth of a warm search."""
    return frozenset(analyze(text))


def terms(text: str) -> str:
    return " ".join(analyze(text))


def crumb(embed_text: str, text: str, heading: str) -> str:
    """The breadcrumb (document title and heading path) kb embedded in front of the chunk's text."""
    if embed_text and embed_text.endswith(text) and len(embed_text) > len(text):
        return embed_text[: len(embed_text) - len(text)]
    return heading or ""


def ensure_schema(db: sqlite3.Connection) -> None:
    for stmt in _DDL:
        db.execute(stmt)


def put(db: sqlite3.Connection, path: str, chunks: Iterable[ChunkLike]) -> None:
    """(Re)write the sections of ``path`` from its chunks, in order (call inside the manifest's
    transaction)."""
    db.execute("DELETE FROM sections WHERE path=?", (path,))
    groups: dict[str, list[ChunkLike]] = {}
    for c in chunks:
        groups.setdefault(c.heading, []).append(c)
    for heading, members in groups.items():
        cur = db.execute("INSERT INTO sections(path, heading) VALUES (?, ?)", (path, heading))
        first = members[0]
        db.execute(
            "INSERT INTO sections_fts(rowid, head, body) VALUES (?, ?, ?)",
            (
                cur.lastrowid,
                terms(crumb(first.embed_text, first.text, first.heading)),
                terms("\n".join(m.text for m in members)),
            ),
        )


def clear(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM sections_fts")
    db.execute("DELETE FROM sections")


def rebuild(db: sqlite3.Connection, chunks: Iterable[ChunkLike]) -> None:
    """Re-create the lexical tables from ``chunks`` (ordered by path, ordinal; call inside a transaction)."""
    for stmt in _DROP:
        db.execute(stmt)
    ensure_schema(db)
    batch: list[ChunkLike] = []
    for c in chunks:
        if batch and c.path != batch[0].path:
            put(db, batch[0].path, batch)
            batch = []
        batch.append(c)
    if batch:
        put(db, batch[0].path, batch)


def in_step(db: sqlite3.Connection) -> bool:
    """Every section of every chunk is indexed (a cheap check run when a manifest is opened)."""
    try:
        (fts,) = db.execute("SELECT count(*) FROM sections_fts").fetchone()
        (secs,) = db.execute("SELECT count(*) FROM sections").fetchone()
    except sqlite3.OperationalError:  # missing: an older manifest
        return False
    (distinct,) = db.execute("SELECT count(*) FROM (SELECT DISTINCT path, heading FROM chunks)").fetchone()
    return bool(fts == secs == distinct)


def _match(words: list[str]) -> str:
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def query(
    db: sqlite3.Connection,
    text: str,
    k: int,
    paths: Sequence[str] | None = None,
    sections: int | None = None,
    stats: TermStats | None = None,
    postings: Postings | None = None,
) -> list[tuple[str, float]]:
    """Chunks of the best ``sections`` sections for ``text`` by BM25 (at most ``k`` chunks), as
    ``(chunk_id, score)``, higher better. ``paths`` restricts the search to those sources (metadata
    filters); ``stats``: the connection's :class:`TermStats` (a new one when not given); ``postings``: its
    in-memory BM25, which answers when it is ready (the same scores; FTS5 otherwise)."""
    words = list(dict.fromkeys(analyze(text)))
    if not words or (paths is not None and not paths):
        return []
    n_docs, df = (stats or TermStats(db))(words)
    words = _informative(words, n_docs, df)
    if postings is not None:
        top = postings.search(db, words, n_docs, df, sections or k, paths)
        found = None if top is None else _chunks(db, top, k)
        if found is not None:
            return found
        if top is not None:
            postings.stale()  # a section moved under the arrays: FTS5 answers, and they are built again
    matches = "SELECT rowid AS id, bm25(sections_fts) AS score FROM sections_fts WHERE sections_fts MATCH ?"
    args: list[object] = [_match(words)]
    if paths is None:
        best = f"{matches} ORDER BY score LIMIT ?"
    else:
        # Score every match once, then keep those in ``paths``: a ``rowid IN (...)`` constraint inside the FTS
        # query makes SQLite run the MATCH once per allowed section (150 ms for 1,000 paths instead of 3 ms).
        best = (
            f"WITH m AS MATERIALIZED ({matches}) SELECT m.id, m.score FROM m JOIN sections s ON s.id = m.id "
            "WHERE s.path IN (SELECT value FROM json_each(?)) ORDER BY m.score LIMIT ?"
        )
        args.append(json.dumps(list(paths)))  # one parameter: no limit on the number of paths
    args.append(sections or k)
    sql = (
        f"SELECT c.id, t.score FROM ({best}) t JOIN sections s ON s.id = t.id "
        "JOIN chunks c ON c.path = s.path AND c.heading = s.heading ORDER BY t.score, c.path, "
        "c.ordinal LIMIT ?"
    )
    args.append(k)
    return [(cid, -float(score)) for cid, score in db.execute(sql, args)]


def _chunks(
    db: sqlite3.Connection, top: list[tuple[int, str, float]], k: int
) -> list[tuple[str, float]] | None:
    """The chunks of ``top`` (sections as ``(rowid, path, score)``) in the order of the FTS5 query above: by
    score, then path, then position; None when a section is not the one the in-memory arrays describe."""
    rows = db.execute(
        "SELECT j.key, s.path, c.id, c.ordinal FROM json_each(?) j JOIN sections s ON s.id = j.value "
        "JOIN chunks c ON c.path = s.path AND c.heading = s.heading",
        (json.dumps([rowid for rowid, _, _ in top]),),
    ).fetchall()
    if {r[0] for r in rows} != set(range(len(top))) or any(path != top[key][1] for key, path, _, _ in rows):
        return None
    rows.sort(key=lambda r: (-top[r[0]][2], r[1], r[3]))
    return [(cid, top[key][2]) for key, _, cid, _ in rows[:k]]


def _informative(words: list[str], n_docs: int, df: dict[str, int]) -> list[str]:
    """``words`` without those in at least half of the sections, when another word is rarer. FTS5 gives such a
    term an IDF of 1e-6 (its formula's is <= 0), so it moves no score by more than ~2e-6, yet it matches most
    sections and BM25 is computed for every match: at 50,000 sections a query holding one costs ~4x as much.
    When every word is that common they all stay (their tiny scores still rank the sections)."""
    if len(words) < 2:
        return words
    rare = [w for w in words if 2 * df.get(w, 0) < n_docs]
    return rare or words


class TermStats:
    """The number of sections and how many of them hold each term, remembered until the database changes.

    FTS5 stores no document frequency: its vocabulary table walks a term's whole posting list to count it
    (26 ms for a query's six commonest terms at 100,000 sections; the count of sections is a scan too), and
    every search needs the counts twice (which terms to match, and the fusion's IDF weights). A long-lived
    reader (``kb watch``, ``kb serve``, a ``KnowledgeBase`` kept open) meets the same common terms in query
    after query, so each is counted once per version of the database: SQLite's ``data_version`` (changes
    when another connection commits) with this connection's ``total_changes`` (its own writes).
    """

    MAX_TERMS = 100_000  # remembered terms; beyond, the memory starts again

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self._version: tuple[int, int] | None = None
        self._n_docs = 0
        self._df: dict[str, int] = {}

    def __call__(self, words: list[str]) -> tuple[int, dict[str, int]]:
        """The number of sections, and how many hold each of ``words`` (absent: none)."""
        (data_version,) = self.db.execute("PRAGMA data_version").fetchone()
        version = (data_version, self.db.total_changes)
        if version != self._version or len(self._df) > self.MAX_TERMS:
            (self._n_docs,) = self.db.execute("SELECT count(*) FROM sections").fetchone()
            self._version, self._df = version, {}
        missing = [w for w in dict.fromkeys(words) if w not in self._df]
        if missing:
            marks = ",".join("?" * len(missing))
            sql = f"SELECT term, doc FROM sections_fts_vocab WHERE term IN ({marks})"
            found = dict(self.db.execute(sql, missing).fetchall())
            self._df.update((w, found.get(w, 0)) for w in missing)
        return self._n_docs, {w: self._df[w] for w in words if self._df[w]}


def idf_weights(db: sqlite3.Connection, text: str, stats: TermStats | None = None) -> dict[str, float]:
    """Each analysed query term with its IDF over sections, as FTS5 computes it. A term no section contains
    gets the highest IDF there is: it is part of the question, and nothing matches it."""
    words = list(dict.fromkeys(analyze(text)))
    if not words:
        return {}
    n_docs, df = (stats or TermStats(db))(words)
    return {w: max(math.log((n_docs - df.get(w, 0) + 0.5) / (df.get(w, 0) + 0.5)), 1e-6) for w in words}


def max_score(weights: dict[str, float]) -> float:
    """The BM25 score a section would get by matching every query term (``weights``: :func:`idf_weights`) as
    strongly as possible: (k1 + 1) times the sum of the terms' IDF. Dividing by it puts BM25 on an absolute
    0..1 scale ("how much of the query's weight does this passage match"), independent of the other candidates
    — unlike min-max normalisation, it does not turn the only, weak match in a small workspace into a perfect
    score."""
    return (K1 + 1) * sum(weights.values())


def coverage(weights: dict[str, float], text: str) -> float:
    """The share of the query's IDF weight whose terms occur in ``text`` (0..1)."""
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    present = term_set(text)
    return sum(w for t, w in weights.items() if t in present) / total
