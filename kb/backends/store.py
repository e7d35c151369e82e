"""The vector index: Chroma, embedded (this module) or on a server (:mod:`kb.backends.chroma_server`). These
two modules are the only ones that import chromadb.

Embedded: one persistent Chroma folder per workspace (``.workos/.kb/chroma``) and one collection per index
fingerprint (embedding model + chunking settings), so vectors of two models never share a collection. Vectors
are always passed in: Chroma's own embedding function is never used (it would try to download a model).

Embedded Chroma keeps its vector index in memory and does not notice another process's writes (a reader kept
open served stale dense results for 51 s after another process committed). :meth:`ChromaStore.reopen` drops
this process's cached view of the folder so the next call reads what is on disk; the engine calls it when the
manifest says another process committed (:mod:`kb.index.engine`).

Failures are told apart: a file system failure (disk full, read-only, I/O error, the folder gone) is a
:class:`kb.errors.StorageError`, transient, and never a reason to set the index aside; only a folder Chroma
cannot read for another reason is :class:`kb.errors.IndexCorruptError` (then ``reset`` moves it aside). A
server that does not answer is a :class:`kb.errors.StoreUnavailableError`, not damage either.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from kb.errors import IndexCorruptError, IndexLockedError, KbError, storage_error
from kb.models import StoreStatus

log = logging.getLogger(__name__)

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

T = TypeVar("T")
Metadata = dict[str, Any]
Neighbours = list[tuple[str, float]]  # (chunk id, cosine similarity), best first
# Candidates Chroma's HNSW graph explores per query (at least as many as asked: 200 in hybrid mode).
# Chroma's default, 100, found 98.2 % of the exact top 200 over SciFact's chunks, so fills ranked differently;
# 1000 finds 99.97 % and both stores give the same nDCG@10 (README, "Running kb for a team").
EF_SEARCH = 1000
HNSW = {"hnsw": {"space": "cosine", "ef_search": EF_SEARCH}}


class Store(Protocol):
    """What kb needs from a vector index."""

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[Metadata]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def query(self, vector: np.ndarray, k: int, where: Metadata | None = None) -> Neighbours: ...

    def ids(self) -> set[str]: ...

    def count(self) -> int: ...

    def check(self) -> None:
        """Raise :class:`kb.errors.IndexCorruptError` when the index cannot be opened or read (and
        :class:`kb.errors.StoreUnavailableError` when it cannot be reached: that is not damage)."""

    def reset(self) -> str:
        """Set a damaged index aside and start an empty one; say what was done."""
        ...

    def drop_other_collections(self) -> list[str]:
        """Delete this workspace's vectors of other index fingerprints (an old model's); their names."""
        ...

    def reopen(self) -> None:
        """Forget what this process has cached of the index, so the next call sees other processes' writes."""

    def status(self) -> StoreStatus:
        """Where the vectors are and this workspace's collections (errors reported, not raised)."""
        ...

    def close(self) -> None: ...


class ChromaCollection:
    """The collection operations both Chroma stores share; a subclass opens the client and the collection
    (:meth:`_connect`) and may wrap every call (:meth:`_call`: retries, reconnection, error messages)."""

    kind = ""
    prefix = "kb_"  # collections of this workspace start with it (dropping old ones never touches others)
    batch_cap = 1_000_000

    def __init__(self, collection: str):
        self.collection_name = collection
        self._client: Any = None
        self._collection: Any = None
        self._max_batch = 0

    # --- to implement ---------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        """A chromadb client."""
        raise NotImplementedError

    @property
    def location(self) -> str:
        raise NotImplementedError

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return fn()

    # --- shared ---------------------------------------------------------------------------------------------
    def _ensure_client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _open(self) -> Any:
        if self._collection is None:
            collection = self._ensure_client().get_or_create_collection(
                self.collection_name, configuration=HNSW, embedding_function=None
            )
            config = getattr(collection, "configuration_json", None) or {}
            have = (config.get("hnsw") or {}).get("ef_search")
            if have not in (None, EF_SEARCH):  # an older kb's collection: get_or_create keeps its settings
                collection.modify(configuration={"hnsw": {"ef_search": EF_SEARCH}})
            self._collection = collection
        return self._collection

    def _col(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(collection, *args)`` through :meth:`_call`."""
        return self._call(what, lambda: fn(self._open(), *args))

    @property
    def max_batch(self) -> int:
        if not self._max_batch:
            client = self._ensure_client()
            try:
                self._max_batch = int(client.get_max_batch_size())
            except Exception:  # pragma: no cover - older clients
                self._max_batch = 5000
        return min(self._max_batch, self.batch_cap)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None:
        step = self._call("write", lambda: self.max_batch)
        for start in range(0, len(ids), step):
            part_ids = list(ids[start : start + step])
            part = np.asarray(vectors[start : start + step], dtype=np.float32)
            metas = list(metadatas[start : start + step])
            self._write(part_ids, part, metas)
            self._link(part_ids, part, metas)

    def _write(self, ids: list[str], vectors: np.ndarray, metadatas: list[Metadata]) -> None:
        """One batch, at most :attr:`max_batch` vectors."""
        self._col("write", _upsert, ids, vectors, metadatas)

    def _link(self, ids: list[str], vectors: np.ndarray, metadatas: list[Metadata]) -> None:
        """After a batch is written: make sure a search finds it (the server store checks; see there)."""

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        step = self._call("write", lambda: self.max_batch)
        for start in range(0, len(ids), step):
            part = list(ids[start : start + step])
            self._col("write", _delete, part)

    def query(self, vector: np.ndarray, k: int, where: Metadata | None = None) -> Neighbours:
        # No count() first: it costs more than the query (~7 ms on 14k vectors), and Chroma 1.5 returns fewer
        # results when n_results exceeds the collection.
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        res = self._col(
            "search",
            lambda c: c.query(
                query_embeddings=q, n_results=max(1, k), where=where or None, include=["distances"]
            ),
        )
        return [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]

    def ids(self) -> set[str]:
        out: set[str] = set()
        total = self.count()
        step = 10000
        for offset in range(0, total, step):
            page = self._col("read", _page, step, offset)
            out.update(page["ids"])
        return out

    def count(self) -> int:
        return int(self._col("read", lambda c: c.count()))

    def check(self) -> None:
        self.count()

    def collections(self) -> list[str]:
        """This workspace's collections (names starting with :attr:`prefix`), sorted."""
        names: list[str] = []
        page = 100

        def listing(offset: int) -> list[Any]:
            return list(self._ensure_client().list_collections(page, offset))

        while True:
            batch = self._call("read", functools.partial(listing, len(names)))
            names += [c if isinstance(c, str) else c.name for c in batch]
            if len(batch) < page:
                break
        return sorted(n for n in names if n.startswith(self.prefix))

    def drop_other_collections(self) -> list[str]:
        dropped = []
        for name in self.collections():
            if name != self.collection_name:
                self._call("write", functools.partial(self._drop, name))
                dropped.append(name)
        return dropped

    def _drop(self, name: str) -> None:
        self._ensure_client().delete_collection(name)

    def status(self) -> StoreStatus:
        st = StoreStatus(self.kind, self.location, self.collection_name)
        try:
            st.collections = self.collections()
            st.vectors = self.count() if self.collection_name in st.collections else 0
        except Exception as exc:  # reported by kb status, never raised by it
            st.error = str(exc)
        return st

    def reopen(self) -> None:
        self._collection = None
        self._client = None

    def close(self) -> None:
        client, self._client, self._collection = self._client, None, None
        if client is not None:
            release_client(client)


def _upsert(col: Any, ids: list[str], vectors: np.ndarray, metadatas: list[Metadata]) -> None:
    col.upsert(ids=ids, embeddings=vectors, metadatas=metadatas)


def _delete(col: Any, ids: list[str]) -> None:
    col.delete(ids=ids)


def _page(col: Any, limit: int, offset: int) -> Any:
    return col.get(include=[], limit=limit, offset=offset)


# One generation counter per embedded folder in this process: bumped by reopen(), so every ChromaStore of this
# process on that folder opens the same fresh view (two views of one folder in one process would go stale
# against each other, as two processes do).
_GENERATIONS: dict[str, int] = {}
_GEN_LOCK = threading.Lock()


class ChromaStore(ChromaCollection):
    """A Chroma collection in a persistent folder; cosine distance."""

    kind = "embedded"

    def __init__(self, path: Path, collection: str):
        super().__init__(collection)
        self.path = path
        self._generation = -1

    @property
    def location(self) -> str:
        return str(self.path)

    def _connect(self) -> Any:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self._call("open", functools.partial(self.path.mkdir, parents=True, exist_ok=True))
        with _GEN_LOCK:
            self._generation = _GENERATIONS.get(str(self.path), 0)
        try:
            return chromadb.PersistentClient(
                path=str(self.path), settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False)
            )
        except Exception as exc:
            raise self._open_failure(exc) from exc

    def _ensure_client(self) -> Any:
        if self._client is not None and self._generation != _GENERATIONS.get(str(self.path), 0):
            self.close()  # another object of this process reopened the folder: use the fresh view too
        return super()._ensure_client()

    def _open(self) -> Any:
        try:
            return super()._open()
        except KbError:
            raise
        except Exception as exc:
            self.close()
            raise self._open_failure(exc) from exc

    def _open_failure(self, exc: Exception) -> KbError:
        """Why the folder cannot be opened: the file system (transient), another process, or damage."""
        failure = storage_error(exc, self.path)
        if failure is not None:
            forget_client(self.path)
            return failure
        if "database is locked" in str(exc).lower():
            return IndexLockedError(f"Another process is using the Chroma index at {self.path}. Try again.")
        return IndexCorruptError(
            f"Cannot open the Chroma index at {self.path}: {exc}. Run: kb index (or kb doctor --repair): it "
            "is rebuilt from the manifest without re-embedding."
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``; a file system failure inside Chroma becomes one :class:`kb.errors.StorageError` line
        (anything else propagates), and the next call opens the folder afresh (it may have been deleted)."""
        try:
            return fn()
        except KbError:
            raise
        except Exception as exc:
            failure = storage_error(exc, self.path)
            if failure is None:
                raise
            self.close()
            forget_client(self.path)
            raise failure from exc

    def reopen(self) -> None:
        """Drop this process's cached view of the folder (Chroma caches one client per folder in-process and
        keeps its vector index in memory); the next call opens a fresh one that sees other processes'
        writes."""
        key = str(self.path)
        with _GEN_LOCK:
            _GENERATIONS[key] = _GENERATIONS.get(key, 0) + 1
            forget_client(key)
        self.close()

    def collections(self) -> list[str]:
        if not self.path.exists():
            return []
        return super().collections()

    def status(self) -> StoreStatus:
        """Where the folder is; collections and vectors only when this process has the folder open already
        (``kb status`` does not import chromadb for an embedded index)."""
        if self._client is None:
            return StoreStatus(self.kind, self.location, self.collection_name)
        return super().status()

    def reset(self) -> str:
        self.close()
        moved = self._call("reset", functools.partial(quarantine, self.path))
        return f"moved to {moved.name}"


def release_client(client: Any) -> None:
    """Give back ``client``'s share of the Chroma system it uses (Chroma shares one per folder or server and
    closes its database connections and files with the last share: without this, every open of an index
    kept ~15 file descriptors until the process ended). Nothing is released when :func:`forget_client` dropped
    or replaced that system meanwhile: the shares counted now belong to a newer client."""
    session = getattr(
        getattr(client, "_server", None), "_session", None
    )  # a server client's HTTP connections
    try:
        from chromadb.api import ServerAPI
        from chromadb.api.shared_system_client import SharedSystemClient

        if client._system.instance(ServerAPI) is client._server:
            client.close()
            # chromadb stops the last share's system but leaves an HttpClient's session open (two sockets)
            if session is not None and client._identifier not in SharedSystemClient._identifier_to_system:
                session.close()
    except Exception:  # the system was dropped (KeyError), or an internal API moved
        log.debug("Chroma client not released", exc_info=True)


def forget_client(path: Path | str | None = None) -> None:
    """Drop Chroma's in-process cache of the client for the folder ``path`` (all folders when None): it
    caches one per folder, and would keep serving a database file that was deleted, moved or rewritten under
    it; other folders' clients stay as they are."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        if path is None:
            SharedSystemClient.clear_system_cache()
            return
        for cache in (SharedSystemClient._identifier_to_system, SharedSystemClient._identifier_to_refcount):
            cache.pop(str(path), None)
    except Exception:  # pragma: no cover - internal API moved
        log.debug("could not clear Chroma's client cache", exc_info=True)


def quarantine(path: Path) -> Path:
    """Move a damaged Chroma folder aside (kept for inspection) so a fresh one can be built."""
    target = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    shutil.move(str(path), str(target))
    with _GEN_LOCK:  # Chroma caches one client per folder in-process; forget the broken one everywhere
        _GENERATIONS[str(path)] = _GENERATIONS.get(str(path), 0) + 1
        forget_client(path)
    return target
