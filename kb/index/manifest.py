"""The manifest: kb's source of truth, in SQLite.

Per source: its path, content hash, size and mtime, and its chunks (text, line range, heading). Per embedded
text: its vector, keyed by model and text hash, so no text is ever embedded twice (a rename, a reverted edit,
a rebuilt Chroma collection all reuse vectors). Chroma is an index derived from this file and can always be
rebuilt from it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kb.errors import IndexCorruptError, storage_error
from kb.index import lexical
from kb.index.postings import Postings

SCHEMA_VERSION = 1
AUX_VECTORS_MAX = 50_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    path TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source_type TEXT NOT NULL,
    title TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    indexed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL REFERENCES sources(path) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    text_hash TEXT NOT NULL,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    heading TEXT NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    embed_text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE TABLE IF NOT EXISTS aux_vectors (
    model_id TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_id, text_hash)
);
CREATE TABLE IF NOT EXISTS vectors (
    model_id TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_id, text_hash)
);
"""


@dataclass
class SourceRow:
    path: str
    content_hash: str
    size: int
    mtime_ns: int
    kind: str
    source_type: str
    title: str | None
    metadata: dict[str, Any]
    indexed_at: float


@dataclass
class ChunkRow:
    id: str
    path: str
    ordinal: int
    text_hash: str
    start_line: int
    end_line: int
    heading: str
    text: str
    page: int | None = None
    embed_text: str = ""


class Manifest:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        try:
            if readonly:
                self.db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False
                )
            else:
                self.db = sqlite3.connect(path, timeout=30, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                # Deleted rows are overwritten, not left in free pages: a secret indexed before it was
                # redacted (mode "off", then "redact") does not linger in the file.
                self.db.execute("PRAGMA secure_delete=ON")
                self.db.executescript(_SCHEMA)
                lexical.ensure_schema(self.db)
                self.db.commit()
                if self.get_meta("schema_version") is None:
                    self.set_meta("schema_version", str(SCHEMA_VERSION))
                    self.db.commit()
                # Sections are written in the chunks' own transactions and the stamp is set in the rebuild's,
                # so the stamp alone says whether the lexical tables match (no scan of the chunks at every
                # open).
                if self.get_meta("lexical_version") != lexical.ANALYZER_VERSION:
                    self.rebuild_lexical()
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("SELECT count(*) FROM sources").fetchone()
            self.term_stats = lexical.TermStats(self.db)  # BM25's counts, remembered per database version
            self.postings = Postings(path)  # BM25 in memory, for a reader that keeps searching
        except sqlite3.DatabaseError as exc:
            failure = storage_error(exc, path.parent)  # disk full, read-only, I/O: not corruption
            if failure is not None:
                raise failure from None
            raise IndexCorruptError(
                f"The manifest {path} cannot be read ({exc}). Move the folder {path.parent} aside and run "
                "kb index to rebuild it."
            ) from None

    def close(self) -> None:
        self.db.close()

    # --- meta ---------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- sources and chunks -------------------------------------------------------------------------------
    def sources(self, paths: Sequence[str] | None = None) -> dict[str, SourceRow]:
        """All sources, or only those at ``paths``."""
        sql = (
            "SELECT path, content_hash, size, mtime_ns, kind, source_type, title, metadata, indexed_at "
            "FROM sources"
        )
        if paths is None:
            rows = self.db.execute(sql).fetchall()
        else:
            unique = list(dict.fromkeys(paths))
            rows = self.db.execute(f"{sql} WHERE path IN ({','.join('?' * len(unique))})", unique).fetchall()
        return {
            r[0]: SourceRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8]) for r in rows
        }

    def source_stats(self) -> dict[str, tuple[int, int]]:
        """Each source's (size, mtime_ns) as indexed, by path (what the freshness check compares)."""
        rows = self.db.execute("SELECT path, size, mtime_ns FROM sources").fetchall()
        return {path: (size, mtime) for path, size, mtime in rows}

    def source_types(self) -> dict[str, str]:
        """Each source's type by path (what filters need: no metadata to parse)."""
        return dict(self.db.execute("SELECT path, source_type FROM sources").fetchall())

    def chunk_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT path, count(*) FROM chunks GROUP BY path").fetchall())

    def chunks_of(self, path: str) -> list[ChunkRow]:
        rows = self.db.execute(
            "SELECT id, path, ordinal, text_hash, start_line, end_line, heading, text, page, "
            "embed_text FROM chunks "
            "WHERE path=? ORDER BY ordinal",
            (path,),
        ).fetchall()
        return [ChunkRow(*r) for r in rows]

    def chunks_by_id(self, ids: Sequence[str]) -> dict[str, ChunkRow]:
        out: dict[str, ChunkRow] = {}
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ",".join("?" * len(part))
            for r in self.db.execute(
                "SELECT id, path, ordinal, text_hash, start_line, end_line, heading, text, page, "
                "embed_text FROM chunks "
                f"WHERE id IN ({marks})",
                part,
            ):
                out[r[0]] = ChunkRow(*r)
        return out

    def chunk_total(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def all_chunk_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM chunks")}

    def iter_chunks(self) -> Iterable[ChunkRow]:
        cur = self.db.execute(
            "SELECT id, path, ordinal, text_hash, start_line, end_line, heading, text, page, "
            "embed_text FROM chunks ORDER BY path, ordinal"
        )
        for r in cur:
            yield ChunkRow(*r)

    def put_source(self, source: SourceRow, chunks: list[ChunkRow]) -> None:
        """Replace a source and its chunks (call inside a transaction)."""
        self.db.execute("DELETE FROM chunks WHERE path=?", (source.path,))
        self.db.execute(
            "INSERT OR REPLACE INTO sources(path, content_hash, size, mtime_ns, kind, source_type, "
            "title, metadata, "
            "indexed_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                source.path,
                source.content_hash,
                source.size,
                source.mtime_ns,
                source.kind,
                source.source_type,
                source.title,
                json.dumps(source.metadata, default=str),
                source.indexed_at,
            ),
        )
        self.db.executemany(
            "INSERT INTO chunks(id, path, ordinal, text_hash, start_line, end_line, heading, text, "
            "page, embed_text) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    c.id,
                    c.path,
                    c.ordinal,
                    c.text_hash,
                    c.start_line,
                    c.end_line,
                    c.heading,
                    c.text,
                    c.page,
                    c.embed_text,
                )
                for c in chunks
            ],
        )
        lexical.put(self.db, source.path, chunks)

    def integrity(self) -> str:
        """SQLite's quick check: "ok", or what is damaged."""
        rows = self.db.execute("PRAGMA quick_check").fetchall()
        return "; ".join(str(r[0]) for r in rows[:3])

    def lexical_ok(self) -> bool:
        """The BM25 tables are of this analyzer's version and hold one row per section of the chunks."""
        return self.get_meta("lexical_version") == lexical.ANALYZER_VERSION and lexical.in_step(self.db)

    def empty_sources(self) -> list[str]:
        """Sources with no chunk (an indexed file always has one): an inconsistency."""
        rows = self.db.execute("SELECT path FROM sources WHERE path NOT IN (SELECT path FROM chunks)")
        return sorted(r[0] for r in rows)

    def rebuild_lexical(self) -> None:
        """Re-derive the BM25 index from the chunks (after an analyzer change or an upgrade; no embedding)."""
        with self.db:
            lexical.rebuild(self.db, list(self.iter_chunks()))
            self.set_meta("lexical_version", lexical.ANALYZER_VERSION)

    def lexical_query(
        self, text: str, k: int, paths: Sequence[str] | None = None, sections: int | None = None
    ) -> list[tuple[str, float]]:
        return lexical.query(self.db, text, k, paths, sections, self.term_stats, self.postings)

    def lexical_weights(self, text: str) -> dict[str, float]:
        return lexical.idf_weights(self.db, text, self.term_stats)

    def touch_source(self, path: str, size: int, mtime_ns: int) -> None:
        self.db.execute("UPDATE sources SET size=?, mtime_ns=? WHERE path=?", (size, mtime_ns, path))

    def remove_source(self, path: str) -> None:
        self.db.execute("DELETE FROM chunks WHERE path=?", (path,))
        self.db.execute("DELETE FROM sections WHERE path=?", (path,))
        self.db.execute("DELETE FROM sources WHERE path=?", (path,))

    def clear_sources(self) -> None:
        self.db.execute("DELETE FROM chunks")
        lexical.clear(self.db)
        self.db.execute("DELETE FROM sources")

    # --- vectors ------------------------------------------------------------------------------------------
    def get_vectors(self, model_id: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            for h, blob in self.db.execute(
                f"SELECT text_hash, vector FROM vectors WHERE model_id=? AND text_hash IN ({marks})",
                [model_id, *part],
            ):
                out[h] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put_vectors(self, model_id: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO vectors(model_id, text_hash, vector) VALUES (?,?,?)",
            [(model_id, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in items],
        )
        self.db.commit()

    def get_aux_vectors(self, model_id: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors of texts that are not chunks (persona lines), kept apart so indexing never prunes them."""
        unique = list(dict.fromkeys(hashes))
        marks = ",".join("?" * len(unique))
        rows = (
            self.db.execute(
                f"SELECT text_hash, vector FROM aux_vectors WHERE model_id=? AND text_hash IN ({marks})",
                [model_id, *unique],
            )
            if unique
            else []
        )
        return {h: np.frombuffer(blob, dtype=np.float32) for h, blob in rows}

    def put_aux_vectors(self, model_id: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO aux_vectors(model_id, text_hash, vector) VALUES (?,?,?)",
                [(model_id, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in items],
            )
            # bounded: the most recently stored AUX_VECTORS_MAX (about 80 MB at 384 dimensions) stay
            self.db.execute(
                "DELETE FROM aux_vectors WHERE rowid IN "
                "(SELECT rowid FROM aux_vectors ORDER BY rowid DESC LIMIT -1 OFFSET ?)",
                (AUX_VECTORS_MAX,),
            )

    def prune_vectors(self, model_id: str) -> int:
        """Drop cached vectors no chunk uses any more (keeps the file from growing forever)."""
        cur = self.db.execute(
            "DELETE FROM vectors WHERE model_id=? AND text_hash NOT IN (SELECT text_hash FROM chunks)",
            (model_id,),
        )
        return cur.rowcount

    def stamp(self) -> float:
        now = time.time()
        self.set_meta("last_indexed_at", repr(now))
        return now

    # --- commits, as other processes see them ---------------------------------------------------------------
    def commit_seq(self) -> int:
        """A counter every writer bumps when the index's content changes (in the transaction that changes
        the chunks, and again once the vector store has caught up): a reader that sees it move knows another
        process committed."""
        value = self.get_meta("commit_seq")
        return int(value) if value else 0

    def bump_commit(self) -> int:
        """Advance :meth:`commit_seq` (call inside the writer's transaction)."""
        seq = self.commit_seq() + 1
        self.set_meta("commit_seq", str(seq))
        return seq

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[None]:
        """Every query inside sees one committed state (a SQLite read transaction), whatever a writer in
        another process commits meanwhile. Inside an open transaction: that one."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            if self.db.in_transaction:
                self.db.commit()

    def drop_vectors(self, model_id: str) -> None:
        """Forget every cached vector of ``model_id`` (``kb index --rebuild``: the model behind the name
        changed)."""
        with self.db:
            self.db.execute("DELETE FROM vectors WHERE model_id=?", (model_id,))
            self.db.execute("DELETE FROM aux_vectors WHERE model_id=?", (model_id,))
