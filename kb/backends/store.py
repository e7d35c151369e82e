"""The vector index: Chroma. The only module that imports chromadb.

One persistent Chroma folder per workspace (``.workos/.kb/chroma``) and one collection per index fingerprint
(embedding model + chunking settings), so vectors of two models never share a collection. Vectors are always
passed in: Chroma's own embedding function is never used (it would try to download a model).

Failures are told apart: a file system failure (disk full, read-only, I/O error, the folder gone) is a
:class:`kb.errors.StorageError`, transient, and never a reason to set the index aside; only a folder Chroma
cannot read for another reason is :class:`kb.errors.IndexCorruptError` (then ``reset`` moves it aside).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kb.errors import IndexCorruptError, IndexLockedError, KbError, storage_error

log = logging.getLogger(__name__)

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


Metadata = dict[str, Any]
Neighbours = list[tuple[str, float]]  # (chunk id, cosine similarity), best first


class Store(Protocol):
    """What kb needs from a vector index."""

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[Metadata]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def query(self, vector: np.ndarray, k: int, where: Metadata | None = None) -> Neighbours: ...

    def ids(self) -> set[str]: ...

    def count(self) -> int: ...

    def check(self) -> None:
        """Raise :class:`kb.errors.IndexCorruptError` when the index cannot be opened or read."""

    def reset(self) -> str:
        """Set a damaged index aside and start an empty one; say what was done."""
        ...

    def drop_other_collections(self) -> list[str]:
        """Delete vectors of other index fingerprints (an old model's); their names."""
        ...

    def close(self) -> None: ...


class ChromaStore:
    """A Chroma collection in a persistent folder; cosine distance."""

    def __init__(self, path: Path, collection: str):
        self.path = path
        self.collection_name = collection
        self._client: Any = None
        self._collection: Any = None

    def _open(self) -> Any:
        if self._collection is None:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            with self._guard():
                self.path.mkdir(parents=True, exist_ok=True)
            try:
                self._client = chromadb.PersistentClient(
                    path=str(self.path),
                    settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False),
                )
                self._collection = self._client.get_or_create_collection(
                    self.collection_name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
                )
            except Exception as exc:
                self._client = self._collection = None
                failure = storage_error(exc, self.path)
                if failure is not None:
                    forget_client(self.path)
                    raise failure from exc
                if "database is locked" in str(exc).lower():
                    raise IndexLockedError(
                        f"Another process is using the Chroma index at {self.path}. Try again."
                    ) from exc
                raise IndexCorruptError(
                    f"Cannot open the Chroma index at {self.path}: {exc}. Run: kb index (or kb doctor "
                    "--repair): it is rebuilt from the manifest without re-embedding."
                ) from exc
        return self._collection

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A file system failure inside Chroma as a one-line StorageError (anything else propagates)."""
        try:
            yield
        except KbError:
            raise
        except Exception as exc:
            failure = storage_error(exc, self.path)
            if failure is None:
                raise
            self.close()
            forget_client(self.path)  # the next open starts afresh (the folder may have been deleted)
            raise failure from exc

    @property
    def max_batch(self) -> int:
        self._open()
        try:
            return int(self._client.get_max_batch_size())
        except Exception:  # pragma: no cover - older clients
            return 5000

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None:
        col = self._open()
        step = self.max_batch
        with self._guard():
            for start in range(0, len(ids), step):
                col.upsert(
                    ids=list(ids[start : start + step]),
                    embeddings=np.asarray(vectors[start : start + step], dtype=np.float32),
                    metadatas=list(metadatas[start : start + step]),
                )

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        col = self._open()
        step = self.max_batch
        with self._guard():
            for start in range(0, len(ids), step):
                col.delete(ids=list(ids[start : start + step]))

    def query(self, vector: np.ndarray, k: int, where: Metadata | None = None) -> Neighbours:
        col = self._open()
        # No count() first: it costs more than the query (~7 ms on 14k vectors), and Chroma 1.5 returns fewer
        # results when n_results exceeds the collection.
        with self._guard():
            res = col.query(
                query_embeddings=np.asarray(vector, dtype=np.float32).reshape(1, -1),
                n_results=max(1, k),
                where=where or None,
                include=["distances"],
            )
        return [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]

    def ids(self) -> set[str]:
        col = self._open()
        out: set[str] = set()
        with self._guard():
            total = col.count()
            step = 10000
            for offset in range(0, total, step):
                out.update(col.get(include=[], limit=step, offset=offset)["ids"])
        return out

    def count(self) -> int:
        col = self._open()
        with self._guard():
            return int(col.count())

    def collections(self) -> list[str]:
        """Names of the kb collections in the folder (this fingerprint's and older ones)."""
        self._open()
        with self._guard():
            names = [c if isinstance(c, str) else c.name for c in self._client.list_collections()]
        return sorted(n for n in names if n.startswith("kb_"))

    def check(self) -> None:
        self.count()

    def reset(self) -> str:
        self.close()
        with self._guard():
            moved = quarantine(self.path)
        return f"moved to {moved.name}"

    def drop_other_collections(self) -> list[str]:
        """Delete collections of other fingerprints (an old model's vectors)."""
        dropped = []
        for name in self.collections():
            if name != self.collection_name:
                with self._guard():
                    self._client.delete_collection(name)
                dropped.append(name)
        return dropped

    def close(self) -> None:
        self._collection = None
        self._client = None


def forget_client(path: Path) -> None:
    """Drop Chroma's in-process cache of the client for ``path`` (it caches one per folder, and would keep
    serving a database file that was deleted under it)."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        for cache in (SharedSystemClient._identifier_to_system, SharedSystemClient._identifier_to_refcount):
            cache.pop(str(path), None)
    except Exception:  # pragma: no cover - internal API moved
        log.debug("could not clear Chroma's client cache", exc_info=True)


def quarantine(path: Path) -> Path:
    """Move a damaged Chroma folder aside (kept for inspection) so a fresh one can be built."""
    target = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    shutil.move(str(path), str(target))
    try:  # Chroma caches one client per folder in-process; forget the broken one
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    except Exception:  # pragma: no cover - internal API moved
        log.debug("could not clear Chroma's client cache", exc_info=True)
    return target
