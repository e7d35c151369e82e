"""BM25 over the manifest's sections, held in memory by a long-lived reader: FTS5's own scores, computed over
posting arrays instead of by FTS5's per-row ranking function.

Why: FTS5 ranks an OR query by calling ``bm25()`` for every section that holds any of its terms, and that call
reads the row's size from FTS5's tables; a search costs in proportion to the matching sections. On generated
text with a Zipf vocabulary, the MATCH alone took 331 ms at p95 over 300,000 sections (``benchmarks/
bench_store.py --parts scale``). The same arithmetic over numpy arrays takes a few milliseconds.

**The same scores, by construction** (``tests/test_postings.py`` compares them with FTS5's):

- a section's terms are split as FTS5's ``unicode61`` tokenizer splits them: ASCII letters and digits are
  the common case; any other token is split by SQLite's own tokenizer (an in-memory FTS5 table), once per
  distinct token;
- the number of sections and each term's section count are FTS5's own (:class:`kb.index.lexical.TermStats`);
- each section's score is summed term by term, in the query's order, with the floating-point operations of
  SQLite's ``fts5Bm25Function``. A query term that is not one FTS5 token is left to FTS5.

**Never stale.** A reader that has been searching for ``BUILD_AFTER_S`` builds the arrays in a background
thread (its own read-only connection, one read transaction; FTS5 answers until they are ready; a one-shot
``kb search`` never pays for them). Before every search whose database
version moved (another process committed, or this connection wrote), the sources whose content hash or
indexing time changed are read again, and only those: the cost follows what changed (their postings form a
small segment; past ``MAX_DELTAS`` such segments are merged, and once a quarter of the sections have been
replaced the arrays are built again in the background). A result whose section
no longer belongs to the source the arrays say is not used: FTS5 answers, and the arrays are built again.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TOKENIZER = "unicode61 remove_diacritics 0"  # the sections' FTS5 tokenizer (kb.index.lexical's schema)
K1, B = 1.2, 0.75  # FTS5's fixed BM25 parameters
BUILD_AFTER_S = 2.0  # a reader searching for this long is long-lived
MAX_DELTAS = 16  # incremental segments before they are merged into one
DEAD_SHARE = 0.25  # replaced sections (still in the postings, masked) before the arrays are built again

_PLAIN = re.compile(r"[a-z0-9]+")


class _Probe:
    """SQLite's own tokenizer, asked through an in-memory FTS5 table (for tokens that are not plain ASCII)."""

    MAX_KNOWN = 200_000  # remembered tokens; beyond, the memory starts again

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute(f"CREATE VIRTUAL TABLE p USING fts5(x, tokenize = '{TOKENIZER}')")
        self.db.execute("CREATE VIRTUAL TABLE pv USING fts5vocab(p, 'instance')")
        self.known: dict[str, tuple[str, ...]] = {}

    def split(self, tokens: Iterable[str]) -> dict[str, tuple[str, ...]]:
        with self.lock:
            asked = list(dict.fromkeys(tokens))
            new = [t for t in asked if t not in self.known]
            if len(self.known) + len(new) > self.MAX_KNOWN:
                self.known = {}
                new = asked
            if new:
                self.db.executemany("INSERT INTO p(rowid, x) VALUES (?, ?)", enumerate(new))
                pieces: dict[int, list[str]] = {i: [] for i in range(len(new))}
                for doc, term in self.db.execute("SELECT doc, term FROM pv ORDER BY doc, offset"):
                    pieces[doc].append(term)
                self.db.execute("DELETE FROM p")
                self.known.update((t, tuple(pieces[i])) for i, t in enumerate(new))
            return {t: self.known[t] for t in asked}


_probe = _Probe()


def fts5_terms(text: str) -> list[str]:
    """``text`` (space-separated analysed terms) as FTS5's tokenizer sees it."""
    tokens = text.split()
    odd = [t for t in tokens if not _PLAIN.fullmatch(t)]
    if not odd:
        return tokens
    split = _probe.split(odd)
    out: list[str] = []
    for t in tokens:
        out.extend(split[t] if t in split else (t,))
    return out


def one_token(word: str) -> bool:
    """FTS5 reads ``word`` as the single token ``word`` (else a query holding it is left to FTS5)."""
    return bool(_PLAIN.fullmatch(word)) or _probe.split([word])[word] == (word,)


@dataclass
class _Segment:
    """Postings of some sections: for each term, the sections holding it and how often."""

    terms: dict[str, int]
    starts: np.ndarray
    docs: np.ndarray
    tfs: np.ndarray

    @classmethod
    def of(cls, counted: Iterable[tuple[int, Counter[str]]]) -> _Segment:
        terms: dict[str, int] = {}
        tids, docs, tfs = array("i"), array("q"), array("d")  # compact while the postings are gathered
        for doc, counts in counted:
            for term, n in counts.items():
                tids.append(terms.setdefault(term, len(terms)))
                docs.append(doc)
                tfs.append(n)
        return cls.by_term(
            terms,
            np.frombuffer(tids, np.int32),
            np.frombuffer(docs, np.int64),
            np.frombuffer(tfs, np.float64),
        )

    @classmethod
    def merge(cls, parts: Sequence[_Segment]) -> _Segment:
        """One segment holding the postings of ``parts`` (in proportion to their size)."""
        terms: dict[str, int] = {}
        tids, docs, tfs = [], [], []
        for seg in parts:
            remap = np.empty(len(seg.terms), dtype=np.int32)
            for term, t in seg.terms.items():
                remap[t] = terms.setdefault(term, len(terms))
            tids.append(np.repeat(remap, np.diff(seg.starts)))
            docs.append(seg.docs)
            tfs.append(seg.tfs)
        return cls.by_term(terms, np.concatenate(tids), np.concatenate(docs), np.concatenate(tfs))

    @classmethod
    def by_term(cls, terms: dict[str, int], tid: np.ndarray, docs: np.ndarray, tfs: np.ndarray) -> _Segment:
        """Postings given as parallel arrays (term number, section, count), grouped by term."""
        order = np.argsort(tid, kind="stable")
        starts = np.searchsorted(tid[order], np.arange(len(terms) + 1))
        return cls(terms, starts, docs[order], tfs[order])

    def get(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        t = self.terms.get(term)
        if t is None:
            return None
        lo, hi = self.starts[t], self.starts[t + 1]
        return self.docs[lo:hi], self.tfs[lo:hi]


@dataclass
class _Arrays:
    """Sections in memory, under internal numbers that are never reused (SQLite reuses rowids)."""

    schema: int
    sources: dict[str, tuple[str, float]]  # path -> (content hash, indexed at) the arrays reflect
    rowid: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    path: list[str] = field(default_factory=list)
    length: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tokens per section (FTS5's D)
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    by_path: dict[str, list[int]] = field(default_factory=dict)
    segments: list[_Segment] = field(default_factory=list)
    tokens: int = 0  # tokens in the live sections
    live: int = 0
    norm: np.ndarray = field(default_factory=lambda: np.zeros(0))  # k1 * (1 - b + b * D / avgdl)

    def add(self, rows: Iterable[tuple[int, str, str, str]]) -> int:
        """Sections as ``(rowid, path, head, body)``; returns how many."""
        base = len(self.path)
        rowids, lengths = array("q"), array("d")

        def counted() -> Iterator[tuple[int, Counter[str]]]:
            for i, (rowid, path, head, body) in enumerate(rows, start=base):
                terms = fts5_terms(head) + fts5_terms(body)
                rowids.append(rowid)
                lengths.append(len(terms))
                self.path.append(path)
                self.by_path.setdefault(path, []).append(i)
                yield i, Counter(terms)

        segment = _Segment.of(counted())
        added = len(rowids)
        if added:
            self.segments.append(segment)
            self.rowid = np.concatenate([self.rowid, np.frombuffer(rowids, np.int64)])
            self.length = np.concatenate([self.length, np.frombuffer(lengths, np.float64)])
            self.alive = np.concatenate([self.alive, np.ones(added, dtype=bool)])
            self.tokens += int(sum(lengths))
            self.live += added
        return added

    def drop(self, path: str) -> None:
        for i in self.by_path.pop(path, []):
            self.alive[i] = False
            self.tokens -= int(self.length[i])
            self.live -= 1

    def normalise(self) -> None:
        """FTS5's length normalisation per section, for the current average length (as fts5Bm25Function
        computes it: the same operations in the same order, so the same doubles)."""
        avgdl = self.tokens / self.live if self.live else 1.0
        self.norm = K1 * ((1 - B) + B * self.length / avgdl)


def _sources(db: sqlite3.Connection) -> dict[str, tuple[str, float]]:
    return {p: (h, t) for p, h, t in db.execute("SELECT path, content_hash, indexed_at FROM sources")}


def _sections(db: sqlite3.Connection, paths: Sequence[str] | None) -> Iterator[tuple[int, str, str, str]]:
    sql = "SELECT s.id, s.path, f.head, f.body FROM sections s JOIN sections_fts f ON f.rowid = s.id"
    if paths is None:
        return iter(db.execute(sql + " ORDER BY s.id"))
    where = " WHERE s.path IN (SELECT value FROM json_each(?)) ORDER BY s.id"
    return iter(db.execute(sql + where, (json.dumps(list(paths)),)).fetchall())


class Postings:
    """The in-memory BM25 of one manifest connection (see the module's docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self._arrays: _Arrays | None = None
        self._built: _Arrays | None = None  # handed over by the build thread
        self._building: threading.Thread | None = None
        self._version: tuple[int, int] | None = None
        self._first: float | None = None
        self.sections_read = 0  # sections read into memory so far (a build reads all; a change, its sources')

    @property
    def ready(self) -> bool:
        return self._arrays is not None or self._built is not None

    def build(self, wait: bool = False) -> None:
        """Build the arrays now, in the background (``wait``: and return when they are ready)."""
        with self.lock:
            thread = self._start()
        if wait:
            thread.join()

    def _start(self) -> threading.Thread:
        if self._building is None or not self._building.is_alive():
            self._building = threading.Thread(target=self._build, name="kb-postings", daemon=True)
            self._building.start()
        return self._building

    def _build(self) -> None:
        started = time.perf_counter()
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            try:
                db.execute("BEGIN")  # one snapshot: the sources' stamps and their sections agree
                (schema,) = db.execute("PRAGMA schema_version").fetchone()
                arrays = _Arrays(schema, _sources(db))
                read = arrays.add(_sections(db, None))
            finally:
                db.close()
        except (sqlite3.Error, MemoryError) as exc:
            log.info("BM25 stays with SQLite FTS5 (the in-memory index could not be built: %s)", exc)
            return
        with self.lock:
            self._built = arrays
            self.sections_read += read
        log.debug(
            "in-memory BM25 over %d sections built in %.1f s", arrays.live, time.perf_counter() - started
        )

    def _current(self, db: sqlite3.Connection, n_docs: int) -> _Arrays | None:
        """The arrays, brought up to date with ``db`` (call holding the lock); None: FTS5 answers."""
        if self._built is not None:
            self._arrays, self._built, self._version = self._built, None, None
        arrays = self._arrays
        if arrays is None:
            now = time.monotonic()
            self._first = self._first or now
            if now - self._first >= BUILD_AFTER_S and self._building is None:
                self._start()
            return None
        (data_version,) = db.execute("PRAGMA data_version").fetchone()
        version = (data_version, db.total_changes)
        if version != self._version:
            (schema,) = db.execute("PRAGMA schema_version").fetchone()
            if schema != arrays.schema:  # the lexical tables were re-created
                self._discard()
                return None
            now_sources = _sources(db)
            changed = [
                p
                for p in arrays.sources.keys() | now_sources.keys()
                if arrays.sources.get(p) != now_sources.get(p)
            ]
            for p in changed:
                arrays.drop(p)
            self.sections_read += arrays.add(_sections(db, [p for p in changed if p in now_sources]))
            arrays.sources, self._version = now_sources, version
            arrays.normalise()
            if len(arrays.segments) > MAX_DELTAS:  # the first is the build's
                arrays.segments[1:] = [_Segment.merge(arrays.segments[1:])]
            if len(arrays.path) - arrays.live > DEAD_SHARE * max(arrays.live, 40_000):
                self._start()  # built again in the background; these serve until then
        if arrays.live != n_docs:
            self._discard()
            return None
        return arrays

    def _discard(self) -> None:
        self._arrays, self._version, self._building, self._first = None, None, None, None

    def search(
        self,
        db: sqlite3.Connection,
        words: list[str],
        n_docs: int,
        df: dict[str, int],
        limit: int,
        paths: Sequence[str] | None,
    ) -> list[tuple[int, str, float]] | None:
        """The best ``limit`` sections for ``words`` as ``(rowid, path, score)``, best first (ties by rowid);
        None when FTS5 must answer (not built yet, or a word FTS5 reads as several tokens)."""
        if not all(one_token(w) for w in words):
            return None
        with self.lock:
            arrays = self._current(db, n_docs)
            if arrays is None:
                return None
            norm = arrays.norm
            scores = np.zeros(len(arrays.rowid))
            for w in words:  # in the query's order, as fts5Bm25Function sums them
                hits = df.get(w, 0)
                idf = math.log((n_docs - hits + 0.5) / (hits + 0.5))
                idf = idf if idf > 0 else 1e-6
                for seg in arrays.segments:
                    found = seg.get(w)
                    if found is not None:
                        docs, tfs = found
                        scores[docs] += idf * ((tfs * (K1 + 1.0)) / (tfs + norm[docs]))
            keep = (scores > 0) & arrays.alive
            if paths is not None:
                allowed = np.zeros(len(scores), dtype=bool)
                for p in paths:
                    allowed[arrays.by_path.get(p, [])] = True
                keep &= allowed
            cand = np.flatnonzero(keep)
            if len(cand) > limit:  # the best ``limit``, and every section tied with the last of them
                cut = np.partition(scores[cand], len(cand) - limit)[len(cand) - limit]
                cand = cand[scores[cand] >= cut]
            ranked = cand[np.lexsort((arrays.rowid[cand], -scores[cand]))][:limit]  # FTS5's ties: any order
            return [(int(arrays.rowid[i]), arrays.path[i], float(scores[i])) for i in ranked]

    def stale(self) -> None:
        """A result did not match the database: forget the arrays (built again later)."""
        with self.lock:
            self._discard()
