"""The index engine: one workspace's manifest, vector store, embedder and write lock, behind one public class.

Everything that reads or writes an index goes through :class:`IndexEngine`: the facade
(:class:`kb.KnowledgeBase`), retrieval and answering (:mod:`kb.answer`), and the features (resources,
evaluation, ``kb watch``). It builds the backends it was not given (``None`` means "from settings"), computes
the index fingerprint once, owns the write lock, and repairs a store that cannot be opened before an index
run, whatever the store is.

Faults are told apart: a file system failure (disk full, read-only, I/O error, a folder that vanished) is a
one-line :class:`kb.errors.StorageError` and leaves the index as it was — never a reason to set a healthy
vector index aside; a vector index that cannot be read for another reason is moved aside and rebuilt from the
manifest. At open time, a vector index holding another number of chunks than the manifest lists (an emptied
``chroma.sqlite3``: dense search would silently find nothing) is repaired from the cached vectors.

Many processes: the manifest's ``commit_seq`` moves with every commit; an engine whose store view is older
(another process wrote) re-opens the store before reading (:meth:`IndexEngine.snapshot`), so a long-lived
reader sees new content without being reopened by hand. The backends come from :mod:`kb.index.wiring`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from kb.backends.embedders import Embedder, LockedEmbedder
from kb.backends.store import Store
from kb.errors import (
    EmptyIndexError,
    IndexCorruptError,
    IndexLockedError,
    KbError,
    StorageError,
    storage_error,
)
from kb.index.changes import TreeStamp, changed_paths, paths_under, refresh
from kb.index.indexer import Indexer, Progress, Scope, fingerprint, text_hash
from kb.index.manifest import Manifest
from kb.index.wiring import check_probe, embedder_from, forget_probe, record_probe, store_from
from kb.locks import Busy, file_lock
from kb.models import Freshness, IndexReport, SourceStatus, Status, StoreStatus, WatcherStatus
from kb.settings import Settings
from kb.workspace import Workspace

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.sqlite3"


class IndexEngine:
    """The index of ``workspace``: manifest (SQLite, the source of truth) + store (vectors) + embedder.

    >>> engine = IndexEngine(find_workspace("data"), settings)   # doctest: +SKIP
    >>> engine.index().chunks_embedded                             # doctest: +SKIP
    >>> manifest, store = engine.ready()                           # doctest: +SKIP
    """

    def __init__(
        self,
        workspace: Workspace,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        store: Store | None = None,
    ):
        self.workspace = workspace
        self.settings = settings
        self._embedder = embedder
        self._store = store
        self._owns_store = store is None  # an injected store belongs to whoever injected it
        self._manifest: Manifest | None = None
        self._fingerprint: str | None = None
        self._locked = False
        self._seen: int | None = None  # the manifest's commit_seq this engine's store view reflects
        self._probed = False
        self._store_checked = False
        self.tree = TreeStamp()  # what the last refresh's walk saw (kb.index.changes.refresh)

    # --- backends -----------------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = embedder_from(self.settings, self.workspace)
        return self._embedder

    def share_embedder(self) -> LockedEmbedder:
        """Make the embedder safe to call from several threads (one call at a time); ``kb watch`` does
        this."""
        if not isinstance(self._embedder, LockedEmbedder):
            self._embedder = LockedEmbedder(self.embedder)
        return self._embedder

    @property
    def fingerprint(self) -> str:
        """The index's identity: embedding model + chunking settings (a change rebuilds the index)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.embedder.model_id, self.settings)
        return self._fingerprint

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = store_from(self.settings, self.workspace, self.fingerprint)
            if self._manifest is not None:
                self._seen = self._manifest.commit_seq()
        return self._store

    @property
    def manifest_path(self) -> Path:
        return self.workspace.state_dir / MANIFEST_NAME

    @property
    def opened(self) -> bool:
        """Whether this engine has opened its manifest or vector store (a client of ``kb watch`` never
        does)."""
        return self._manifest is not None or (self._store is not None and self._owns_store)

    def has_index(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> Manifest:
        """The manifest, created if missing (for writers)."""
        if self._manifest is None:
            self.workspace.ensure_state_dir()
            self._manifest = Manifest(self.manifest_path)
        return self._manifest

    def reader(self) -> Manifest:
        """The manifest of an existing index (for readers): :class:`EmptyIndexError` when nothing is
        indexed."""
        if self._manifest is None:
            if not self.has_index():
                raise EmptyIndexError(
                    f"Nothing is indexed in {self.workspace.root} yet. Run: kb index --workspace "
                    f"{self.workspace.root}"
                )
            self._manifest = Manifest(self.manifest_path)
        return self._manifest

    def ready(self) -> tuple[Manifest, Store]:
        """Manifest and store of an index built with the current settings, ready to query."""
        manifest = self.reader()
        built = manifest.get_meta("fingerprint")
        if built is None:
            raise EmptyIndexError(f"Nothing is indexed in {self.workspace.root} yet. Run: kb index")
        if built != self.fingerprint:
            raise EmptyIndexError(
                "The index was built with other settings (embedding model, chunking or [secrets]) than the "
                "current ones. Run: kb index (it rebuilds automatically)."
            )
        self.check_embedder(manifest)
        self.follow(manifest.commit_seq())
        if not self._store_checked:
            self._check_store(manifest)
            self._store_checked = True
        return manifest, self.store

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[tuple[Manifest, Store, int]]:
        """Manifest and store for one consistent read, and the commit it reflects: every manifest query
        inside sees that one committed state, and the store view is at least as new (re-opened when another
        process committed since). The vector store has no transactions: a reader compares
        :meth:`committed_since` afterwards and reads again if a commit landed meanwhile
        (:class:`kb.answer.query.Query` does)."""
        manifest, _ = self.ready()
        with manifest.read_transaction():
            seq = manifest.commit_seq()
            self.follow(seq)
            yield manifest, self.store, seq

    def committed_since(self, seq: int) -> bool:
        """Whether a writer committed after the commit ``seq`` (a cheap query)."""
        return self.reader().commit_seq() != seq

    def follow(self, seq: int) -> None:
        """The manifest is at commit ``seq``: if that is not what this engine's store view reflects, another
        process wrote; re-open the store (embedded Chroma keeps serving what it loaded otherwise). A store
        that was injected, or that this engine wrote itself, is current already."""
        if self._seen is not None and seq != self._seen and self._owns_store and self._store is not None:
            log.debug(
                "index commit %s -> %s by another process: re-opening the vector store", self._seen, seq
            )
            self._store.reopen()
        self._seen = seq

    def check_embedder(self, manifest: Manifest) -> None:
        """A remote embedder (``openai-compatible:``) may change its model behind the same name: its vector
        of a fixed probe text must still be the one recorded when the index was built (once per engine)."""
        if not self._probed:
            check_probe(self.embedder, manifest)
            self._probed = True

    def _check_store(self, manifest: Manifest) -> None:
        """Once per engine, before the first query: does the vector index hold as many chunks as the
        manifest lists? If not (an emptied or replaced ``chroma.sqlite3``, a killed run), reconcile now from
        the cached vectors — unless another process is writing (it reconciles itself when it finishes)."""
        want = manifest.chunk_total()
        try:
            have = self.store.count()
        except IndexCorruptError as exc:  # set aside and rebuilt from the cached vectors, as kb index does
            log.warning("%s", exc)
            have = -1
        if have == want:
            return
        log.warning("the vector index holds %d chunks, the manifest %d: repairing", max(have, 0), want)
        try:
            with self.write_lock():
                repaired = [f"vector index {self.store.reset()}"] if have < 0 else []
                repaired += self.reconcile()
        except IndexLockedError:
            log.warning("another kb process is writing the index; it repairs the vector index when done")
            return
        except StorageError as exc:
            raise IndexCorruptError(
                f"The vector index holds {max(have, 0)} of the {want} chunks the manifest lists and could "
                f"not be repaired: {exc} Then run: kb doctor --repair"
            ) from None
        for line in repaired:
            log.warning("index repair: %s", line)

    def reconcile(self, embed: bool = True) -> list[str]:
        """Make the vector index hold exactly the manifest's chunks (the caller holds the write lock): orphans
        deleted, missing chunks restored from cached vectors (``embed``: embedding those not cached)."""
        manifest = self._manifest or self.manifest()
        indexer = Indexer(self.workspace.root, self.settings, manifest, self.store, self.embedder)
        repaired = indexer.reconcile(embed)
        if repaired:  # readers in other processes re-open the vector store
            with manifest.db:
                manifest.bump_commit()
            self._seen = manifest.commit_seq()
        return repaired

    # --- writing ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self, wait: float = 0.0) -> Iterator[None]:
        """The index's single-writer lock (re-entrant for its holder: ``kb watch`` indexes while holding
        it). ``wait``: seconds to keep trying while another process holds it (a search's refresh holds it for
        a moment); then :class:`IndexLockedError`."""
        if self._locked:
            yield
            return
        try:
            with file_lock(self.workspace.ensure_state_dir() / "write.lock", wait=wait, record_pid=True):
                self._locked = True
                try:
                    yield
                finally:
                    self._locked = False
        except Busy as busy:
            waited = f" (waited {wait:g} s)" if wait else ""
            raise IndexLockedError(
                f"Another kb process (pid {busy.holder}) is writing the index of {self.workspace.root}"
                f"{waited}. Wait for it to finish (or stop it) and try again."
            ) from None

    def index(
        self,
        progress: Progress | None = None,
        scope: Scope | None = None,
        *,
        rebuild: bool = False,
        wait: float = 0.0,
    ) -> IndexReport:
        """Bring the index up to date with the files (incremental; see :mod:`kb.index.indexer`); ``scope``
        restricts the run to some paths (``kb watch``'s targeted runs); ``rebuild`` re-reads and re-embeds
        everything (the embedding model behind a name changed); ``wait``: seconds to wait for another writer
        (:meth:`write_lock`). A file system failure is a one-line
        :class:`StorageError`; the index is left as it was, and the next run completes it."""
        try:
            return self._index(progress, scope, rebuild, wait)
        except (OSError, sqlite3.Error) as exc:
            failure = storage_error(exc, self.workspace.state_dir)
            if failure is None:
                raise
            raise failure from None

    def _index(
        self, progress: Progress | None, scope: Scope | None, rebuild: bool, wait: float
    ) -> IndexReport:
        with self.write_lock(wait):
            manifest = self.manifest()
            if rebuild:
                forget_probe(self.embedder, manifest)
                self._probed = True
            elif manifest.get_meta("fingerprint") == self.fingerprint:
                self.check_embedder(manifest)
            self.follow(manifest.commit_seq())
            store = self.store
            repaired: list[str] = []
            try:
                store.check()
            except IndexCorruptError as exc:
                repaired.append(f"vector index could not be opened ({exc}); {store.reset()} and rebuilt")
            report = Indexer(
                self.workspace.root, self.settings, manifest, store, self.embedder, progress, rebuild=rebuild
            ).run(scope)
            self._seen = manifest.commit_seq()  # this engine's own writes: its store view has them
            report.repaired = repaired + report.repaired
            record_probe(self.embedder, manifest)
            if scope is None:
                store.drop_other_collections()
            return report

    def changed_paths(self, unloadable: dict[str, tuple[int, int]] | None = None) -> set[str]:
        """Paths whose files differ from the index (see :func:`kb.index.changes.changed_paths`)."""
        return changed_paths(self.workspace.root, self.settings, self.manifest(), unloadable)

    def stale_paths(self) -> list[str]:
        """Indexed sources whose file changed (size or mtime) or vanished since they were indexed: a stat per
        file, nothing read ([] when nothing is indexed)."""
        if not self.has_index():
            return []
        known = self.reader().source_stats()
        return sorted(p for p in self.changed_paths() if p in known)

    def refresh(self, max_files: int) -> Freshness:
        """Re-index what changed on disk since it was indexed (at most ``max_files`` files), before a one-shot
        search or answer; what is left is reported as ``stale`` (see :func:`kb.index.changes.refresh`)."""
        return refresh(self, max_files)

    def paths_under(self, folders: set[str]) -> set[str]:
        """Every path under ``folders``, on disk or in the index (:func:`kb.index.changes.paths_under`)."""
        return paths_under(self.workspace.root, self.manifest(), folders)

    # --- cached embeddings --------------------------------------------------------------------------------
    def embed_cached(self, texts: Sequence[str]) -> np.ndarray:
        """Embed persona lines and evidence sentences through a cache in the manifest (``aux_vectors``): a
        one-shot ``kb ask`` embeds only sentences no earlier question has drawn on."""
        if not texts:
            return np.asarray(self.embedder.embed([]), dtype=np.float32)
        manifest, model = self.reader(), self.embedder.model_id
        hashes = [text_hash(t) for t in texts]
        have = manifest.get_aux_vectors(model, hashes)
        todo = [(h, t) for h, t in dict(zip(hashes, texts, strict=True)).items() if h not in have]
        if todo:
            fresh = self.embedder.embed([t for _, t in todo])
            with contextlib.suppress(
                sqlite3.OperationalError
            ):  # a read-only or busy manifest: just don't cache
                manifest.put_aux_vectors(model, zip([h for h, _ in todo], fresh, strict=True))
            have.update({h: v for (h, _), v in zip(todo, fresh, strict=True)})
        return np.stack([have[h] for h in hashes])

    # --- reporting ----------------------------------------------------------------------------------------
    def chunk_counts(self) -> dict[str, int]:
        """Chunks per indexed path ({} when nothing is indexed)."""
        return self.reader().chunk_counts() if self.has_index() else {}

    def store_status(self) -> StoreStatus:
        """Which store holds the vectors (the folder or the server's URL) and this workspace's collections."""
        try:
            return self.store.status()
        except KbError as exc:  # e.g. a remote embedder that is down: the collection name is unknown
            cfg = self.settings.store
            where = cfg.url or str(self.workspace.state_dir / "chroma")
            return StoreStatus("server" if cfg.url else "embedded", where, "", error=str(exc))

    def status(self, watcher: WatcherStatus | None) -> Status:
        ws, model = self.workspace, self.settings.embedder
        if not self.has_index():
            empty = (str(ws.root), str(ws.state_dir), model, self.settings.embedder_runtime, None, 0, 0, None)
            return Status(*empty, watcher=watcher, store=self.store_status())
        manifest = self.reader()
        counts = manifest.chunk_counts()
        sources = [
            SourceStatus(s.path, s.content_hash, counts.get(s.path, 0), s.indexed_at, s.source_type)
            for s in sorted(manifest.sources().values(), key=lambda s: s.path)
        ]
        last = manifest.get_meta("last_indexed_at")
        return Status(
            workspace=str(ws.root),
            index_dir=str(ws.state_dir),
            model=manifest.get_meta("model_id") or model,
            embedder_runtime=self.settings.embedder_runtime,
            fingerprint=manifest.get_meta("fingerprint"),
            sources_count=len(sources),
            chunks_count=sum(counts.values()),
            last_indexed_at=float(last) if last else None,
            sources=sources,
            watcher=watcher,
            store=self.store_status(),
        )

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
        if self._store is not None and self._owns_store:
            self._store.close()
