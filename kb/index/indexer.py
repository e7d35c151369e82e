"""Incremental, crash-safe indexing.

The manifest (SQLite) is the source of truth; Chroma is derived from it. One run:

1. discover files; a file whose size and mtime match the manifest is not even read;
2. read, hash, load and chunk what changed; a file whose hash matches is only "touched". Credentials in the
   text (and in string metadata) are replaced by ``[secret: KIND]`` before chunking (``[secrets] mode``), so
   nothing stored, embedded or shown holds them; line numbers do not move;
3. embed only texts whose vectors are not cached (vectors are committed batch by batch, so a killed run loses
   no embedding work); renames, reverts and rebuilt collections reuse cached vectors;
4. upsert the new chunks into Chroma, then commit the manifest in ONE transaction, then delete chunks that are
   gone. Readers trust only chunk ids present in the manifest, so at every instant the index answers from
   either the previous state or the new one, never a mix;
5. reconcile Chroma with the manifest (orphans deleted, missing chunks re-added from cached vectors), which
also
   finishes whatever a killed run left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ingest.chunking import CHUNKER_VERSION, chunk_document
from ingest.discovery import Candidate, Skipped, discover, read_candidate
from ingest.layout import DEFAULT_INCLUDE, source_type_of
from ingest.loaders import Document, LoadError, load_document
from ingest.secrets import RULES_VERSION, SecretScanLimit, parse_allow_list, redact
from kb.backends.embedders import Embedder
from kb.backends.store import Store
from kb.index.manifest import ChunkRow, Manifest, SourceRow
from kb.models import IndexReport, Progress, RedactedSecret, SkippedFile
from kb.settings import Settings

log = logging.getLogger(__name__)

Scope = tuple[list[Candidate], list[Skipped], list[str]]  # a targeted run: candidates, skips, paths covered
EMBED_BATCH = 32

# Reasons for which a previously indexed file keeps its indexed content (the problem may be passing).
_TRANSIENT = ("permission denied", "cannot stat", "cannot read", "vanished", "grew beyond")


def fingerprint(model_id: str, settings: Settings) -> str:
    secrets = settings.secrets
    blob = json.dumps(
        {"model": model_id, "chunker": CHUNKER_VERSION, "max_tokens": settings.chunk_max_tokens}
        | (  # what is stored depends on them: a change re-derives every chunk (cached vectors reused)
            {"secrets": [secrets.mode, sorted(secrets.allow), RULES_VERSION]} if secrets.mode != "off" else {}
        )
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def collection_name(fp: str) -> str:
    return f"kb_{fp}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chunk_id(path: str, thash: str, occurrence: int) -> str:
    return hashlib.sha1(f"{path}\0{thash}\0{occurrence}".encode()).hexdigest()[:24]


@dataclass
class _Change:
    candidate: Candidate
    content_hash: str
    source: SourceRow
    chunks: list[ChunkRow]
    previous: str | None  # path it had before (rename) or its own path (update), None when new
    redacted: list[RedactedSecret]


def chroma_metadata(row: ChunkRow) -> dict[str, Any]:
    """What the vector index keeps beside a vector: the path, which searches filter on. Lines, heading and
    type live in the manifest only (an unchanged chunk keeps its id when lines around it move, and is not
    written again)."""
    return {"path": row.path}


class Indexer:
    def __init__(
        self,
        root: Any,
        settings: Settings,
        manifest: Manifest,
        store: Store,
        embedder: Embedder,
        progress: Progress | None = None,
        *,
        rebuild: bool = False,
    ):
        self.root = root
        self.settings = settings
        self.manifest = manifest
        self.store = store
        self.embedder = embedder
        self.progress = progress or (lambda stage, done, total: None)
        self.max_bytes = int(settings.max_file_mb * 1024 * 1024)
        self.embedded = 0
        self.force_rebuild = rebuild  # kb index --rebuild: re-read and re-embed everything
        self.allow = parse_allow_list(settings.secrets.allow)

    # --- the run ------------------------------------------------------------------------------------------
    def run(self, scope: Scope | None = None) -> IndexReport:
        """One run over the whole workspace, or over ``scope`` (kb watch's targeted run over dirty paths):
        its candidates, skips and every path it covers, on disk or in the manifest."""
        started = time.perf_counter()
        report = IndexReport()
        fp = fingerprint(self.embedder.model_id, self.settings)
        previous_fp = self.manifest.get_meta("fingerprint")
        rebuild = (previous_fp is not None and previous_fp != fp) or self.force_rebuild
        report.rebuilt = rebuild
        if rebuild:
            log.info("index settings changed (%s -> %s): rebuilding from the files", previous_fp, fp)

        if scope is None or rebuild:
            candidates, skipped = discover(
                self.root,
                DEFAULT_INCLUDE + self.settings.include,
                self.settings.exclude,
                self.max_bytes,
                follow_hardlinks=self.settings.follow_hardlinks,
            )
            old = self.manifest.sources()
        else:
            candidates, skipped, covered = scope
            old = self.manifest.sources(covered)
        report.skipped = [SkippedFile(s.path, s.reason) for s in skipped]
        kept = {s.path for s in skipped if s.path in old and s.reason.startswith(_TRANSIENT)}

        changes: list[_Change] = []
        touched: list[Candidate] = []
        unloadable: set[str] = set()
        self.progress("scan", 0, len(candidates))
        for n, cand in enumerate(candidates, 1):
            self.progress("scan", n, len(candidates))
            prev = old.get(cand.path)
            if not rebuild and prev and prev.size == cand.size and prev.mtime_ns == cand.mtime_ns:
                report.unchanged += 1
                continue
            try:
                data = read_candidate(cand, self.max_bytes)
            except OSError as exc:
                reason = f"cannot read: {exc.strerror or exc}"
                report.skipped.append(SkippedFile(cand.path, reason))
                if prev:
                    kept.add(cand.path)
                continue
            chash = hashlib.sha256(data).hexdigest()
            if not rebuild and prev and prev.content_hash == chash:
                touched.append(cand)
                report.unchanged += 1
                continue
            try:
                change = self._prepare(cand, data, chash)
            except LoadError as exc:
                # The file's content is no longer indexable: its old chunks would cite lines that are gone.
                report.skipped.append(SkippedFile(cand.path, str(exc)))
                unloadable.add(cand.path)
                continue
            change.previous = cand.path if prev else None
            changes.append(change)

        present = ({c.path for c in candidates} - unloadable) | kept
        removed = [p for p in old if p not in present]
        # A new path whose content is exactly that of a removed path is a rename (or a move).
        removed_by_hash: dict[str, list[str]] = {}
        for p in removed:
            removed_by_hash.setdefault(old[p].content_hash, []).append(p)
        for change in changes:
            if change.previous is None and removed_by_hash.get(change.content_hash):
                origin = removed_by_hash[change.content_hash].pop(0)
                change.previous = origin
                report.renamed.append((origin, change.candidate.path))
            elif change.previous is None:
                report.added.append(change.candidate.path)
            else:
                report.updated.append(change.candidate.path)
        report.redacted = [r for change in changes for r in change.redacted]
        renamed_from = {a for a, _ in report.renamed}
        report.removed = [p for p in removed if p not in renamed_from]

        # Embed what is not cached, then write: Chroma first, the manifest in one transaction, deletions last.
        # A chunk whose id the file had already (same path, text and occurrence: the same vector) is in the
        # vector index: only new ids are written (re-writing one made embedded Chroma 1.5.9 lose another
        # vector of the same batch from its in-memory index, in about 1 run of 2 of tests/test_multiprocess).
        new_rows = [row for change in changes for row in change.chunks]
        old_ids: set[str] = set()
        for path in [c.previous for c in changes if c.previous] + report.removed:
            old_ids.update(r.id for r in self.manifest.chunks_of(path))
        write = new_rows if rebuild else [r for r in new_rows if r.id not in old_ids]
        vectors = self._vectors_for(write)
        self.progress("write", 0, 1)
        self.store.upsert(
            [r.id for r in write],
            np.stack([vectors[r.text_hash] for r in write]) if write else np.zeros((0, 1), np.float32),
            [chroma_metadata(r) for r in write],
        )
        db = self.manifest.db
        with db:
            if rebuild:
                self.manifest.clear_sources()
            for change in changes:
                if change.previous and change.previous != change.candidate.path:
                    self.manifest.remove_source(change.previous)
                self.manifest.put_source(change.source, change.chunks)
            for cand in touched:
                self.manifest.touch_source(cand.path, cand.size, cand.mtime_ns)
            for path in report.removed:
                self.manifest.remove_source(path)
            self.manifest.set_meta("fingerprint", fp)
            self.manifest.set_meta("model_id", self.embedder.model_id)
            self.manifest.stamp()
            if changes or report.removed or rebuild:
                self.manifest.bump_commit()  # readers in other processes re-open the vector store
        new_ids = {r.id for r in new_rows}
        stale = sorted(old_ids - new_ids)
        self.store.delete(stale)
        report.repaired = self.reconcile() if scope is None or rebuild else []
        if stale or report.repaired:
            with db:
                self.manifest.bump_commit()  # the store caught up: readers look again
        if (
            scope is None or rebuild
        ):  # a targeted run keeps cached vectors: a move split over two runs reuses them
            with db:
                self.manifest.prune_vectors(self.embedder.model_id)
        report.chunks_embedded = self.embedded
        report.chunks_total = len(self.manifest.all_chunk_ids())
        report.seconds = time.perf_counter() - started
        self.progress("done", 1, 1)
        return report

    # --- helpers ------------------------------------------------------------------------------------------
    def _prepare(self, cand: Candidate, data: bytes, chash: str) -> _Change:
        doc = load_document(data, cand.kind)
        redacted = self._redact(cand.path, doc)
        title = doc.metadata.get("title") if isinstance(doc.metadata.get("title"), str) else None
        chunks = chunk_document(doc, self.embedder.count_tokens, self.settings.chunk_max_tokens, title=title)
        if not chunks:
            raise LoadError("no text to index")
        seen: dict[str, int] = {}
        rows = []
        for ch in chunks:
            th = text_hash(ch.embed_text)
            occurrence = seen.get(th, 0)
            seen[th] = occurrence + 1
            rows.append(
                ChunkRow(
                    id=chunk_id(cand.path, th, occurrence),
                    path=cand.path,
                    ordinal=ch.ordinal,
                    text_hash=th,
                    start_line=ch.start_line,
                    end_line=ch.end_line,
                    heading=ch.heading,
                    text=ch.text,
                    page=ch.page,
                    embed_text=ch.embed_text,
                )
            )
        source = SourceRow(
            path=cand.path,
            content_hash=chash,
            size=cand.size,
            mtime_ns=cand.mtime_ns,
            kind=cand.kind,
            source_type=source_type_of(cand.path),
            title=title or (chunks[0].heading_path[0] if chunks[0].heading_path else None),
            metadata=doc.metadata,
            indexed_at=time.time(),
        )
        return _Change(cand, chash, source, rows, None, redacted)

    def _redact(self, path: str, doc: Document) -> list[RedactedSecret]:
        """Replace the credentials in ``doc`` (its text, and its string metadata) by ``[secret: KIND]``;
        what was replaced (never the secret). LoadError (the file is skipped) when the scan gives up, or
        when ``[secrets] mode = "skip-file"`` and there is a secret."""
        mode = self.settings.secrets.mode
        if mode == "off":
            return []
        try:
            text, found = redact(doc.text, self.allow)
            records = [RedactedSecret(path, f.line, f.kind) for f in found]
            in_front_matter = {f.kind for f in found if f.line < doc.body_start_line}
            meta: dict[str, Any] = {}
            for key, value in doc.metadata.items():
                if isinstance(value, str):
                    value, more = redact(value, self.allow)
                    # line 0: a title or other metadata outside the text (front matter is in the text)
                    records += [
                        RedactedSecret(path, 0, f.kind) for f in more if f.kind not in in_front_matter
                    ]
                meta[key] = value
        except SecretScanLimit as exc:
            raise LoadError(f"secret scan gave up ({exc}): not indexed") from None
        if records and mode == "skip-file":
            where = ", ".join(f"{r.kind} (line {r.line})" for r in records[:5])
            raise LoadError(
                f'holds {len(records)} secret(s): {where}; not indexed ([secrets] mode = "skip-file")'
            )
        doc.text, doc.metadata = text, meta
        if records:
            log.info("%s: %d secret(s) redacted (%s)", path, len(records), ", ".join(r.kind for r in records))
        return records

    def _vectors_for(self, rows: list[ChunkRow]) -> dict[str, np.ndarray]:
        model = self.embedder.model_id
        vectors = self.manifest.get_vectors(model, [r.text_hash for r in rows])
        todo: dict[str, str] = {}
        for r in rows:
            if r.text_hash not in vectors and r.text_hash not in todo:
                todo[r.text_hash] = r.embed_text
        if todo:
            items = sorted(todo.items(), key=lambda kv: len(kv[1]))
            total = len(items)
            self.progress("embed", 0, total)
            step = int(getattr(self.embedder, "batch_size", EMBED_BATCH))  # a remote server takes more
            for start in range(0, total, step):
                batch = items[start : start + step]
                vecs = self.embedder.embed([t for _, t in batch])
                self.embedded += len(batch)
                self.manifest.put_vectors(model, [(h, v) for (h, _), v in zip(batch, vecs, strict=True)])
                for (h, _), v in zip(batch, vecs, strict=True):
                    vectors[h] = v
                self.progress("embed", min(start + step, total), total)
        return vectors

    def reconcile(self, embed: bool = True) -> list[str]:
        """Make Chroma hold exactly the manifest's chunks. Returns what was repaired (normally nothing).
        Without ``embed``, chunks whose vector is not in the cache are left out (and said so)."""
        want = self.manifest.all_chunk_ids()
        have = self.store.ids()
        extra = sorted(have - want)
        missing = sorted(want - have)
        repaired = []
        if extra:
            self.store.delete(extra)
            repaired.append(f"removed {len(extra)} orphan chunk(s) from the vector index")
        if missing:
            rows = list(self.manifest.chunks_by_id(missing).values())
            if not embed:
                cached = self.manifest.get_vectors(self.embedder.model_id, [r.text_hash for r in rows])
                lacking = [r for r in rows if r.text_hash not in cached]
                rows = [r for r in rows if r.text_hash in cached]
                if lacking:
                    repaired.append(
                        f"{len(lacking)} chunk(s) have no cached vector: run kb index to embed them"
                    )
            vectors = self._vectors_for(rows)
            if rows:
                self.store.upsert(
                    [r.id for r in rows],
                    np.stack([vectors[r.text_hash] for r in rows]),
                    [chroma_metadata(r) for r in rows],
                )
                repaired.append(f"restored {len(rows)} missing chunk(s) to the vector index")
        for line in repaired:
            log.warning("index repair: %s", line)
        return repaired
