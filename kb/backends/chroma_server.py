"""The vector index on a Chroma server (``chroma run``, 1.x; the same client reaches a distributed or hosted
Chroma): many workspaces, one service.

Each workspace's collections are named ``kb_<workspace id>_<fingerprint>`` (:meth:`kb.workspace.Workspace.
workspace_id`: stable, so moving the folder keeps the index), and everything this store lists or drops is
restricted to that prefix: two workspaces never see, or delete, each other's vectors.

Faults: a refused connection, a timeout or a dropped connection is retried with backoff (``retries``), and
reconnects to a restarted server without restarting kb; then it becomes one
:class:`kb.errors.StoreUnavailableError` line naming the URL and what to do. Every write is idempotent
(upserts and deletes by id), so a retry never duplicates anything, and the manifest commits only after the
vectors are in: a run cut off by the server leaves the previous state, the next run completes it. A collection
that vanished (deleted, or a server restarted on an empty folder) is recreated, and the next ``kb index``
refills it from the manifest's cached vectors without embedding anything.

The open-source 1.x server does not authenticate: put a proxy that does in front of it and give kb the header
it expects (``[store] headers`` / ``KB_CHROMA_HEADERS``); headers are never logged or printed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from kb.backends.store import ChromaCollection, Metadata
from kb.errors import ConfigError, IndexCorruptError, StoreUnavailableError
from kb.models import StoreStatus

log = logging.getLogger(__name__)
LINK_CHECK = 10  # neighbours asked for when checking that a written vector is searchable
LINK_TRIES = 3

T = TypeVar("T")
HEARTBEAT = "/api/v2/heartbeat"


class ChromaServerStore(ChromaCollection):
    """One workspace's collection on a Chroma server."""

    kind = "server"
    batch_cap = 1000  # vectors per request: keeps each request well inside the timeout

    def __init__(
        self,
        url: str,
        collection: str,
        *,
        prefix: str,
        tenant: str = "default_tenant",
        database: str = "default_database",
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 0.5,
    ):
        super().__init__(collection)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise ConfigError(
                f"The Chroma server URL {url!r} is not of the form http(s)://HOST[:PORT]; fix [store] url in "
                "kb.toml or KB_CHROMA_URL."
            )
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.ssl = parts.scheme == "https"
        self.port = parts.port or (443 if self.ssl else 80)
        self.prefix = prefix
        self.tenant, self.database = tenant, database
        self.headers = dict(headers or {})
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    @property
    def location(self) -> str:
        return self.url

    # --- connecting ---------------------------------------------------------------------------------------
    def _unreachable(self, why: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Cannot reach the Chroma server at {self.url} ({why}). Start it (chroma run --path DIR --host "
            f"{self.host} --port {self.port}) or point kb at the right one with KB_CHROMA_URL or [store] url "
            "in kb.toml; nothing was half-written."
        )

    def _too_slow(self, what: str, seconds: float) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"The Chroma server at {self.url} did not answer a {what} within {seconds:g} s. Check it is "
            f"healthy (GET {self.url}{HEARTBEAT}) or raise [store] timeout in kb.toml; nothing was "
            "half-written."
        )

    def _heartbeat(self) -> None:
        """One plain HTTP request first: it tells a refused connection, a proxy refusing the token and a
        server that is not Chroma apart, which chromadb's client does not."""
        import httpx

        try:
            r = httpx.get(
                self.url + HEARTBEAT, headers=self.headers, timeout=min(self.timeout, 10.0), trust_env=False
            )
        except httpx.TimeoutException:
            raise self._too_slow("heartbeat", min(self.timeout, 10.0)) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(str(exc) or type(exc).__name__) from None
        if r.status_code in (401, 403, 407):
            raise StoreUnavailableError(
                f"The Chroma server at {self.url} refused kb (HTTP {r.status_code}): set the header its "
                "authenticating proxy expects in KB_CHROMA_HEADERS (a JSON object) or [store] headers."
            )
        if r.status_code != 200:
            raise self._unreachable(f"HTTP {r.status_code} from {HEARTBEAT}: is this a Chroma 1.x server?")

    def _connect(self) -> Any:
        import chromadb
        import httpx
        from chromadb.config import Settings as ChromaSettings
        from chromadb.errors import NotFoundError

        self._heartbeat()

        def client() -> Any:
            return chromadb.HttpClient(
                host=self.host,
                port=self.port,
                ssl=self.ssl,
                headers=self.headers or None,
                tenant=self.tenant,
                database=self.database,
                settings=ChromaSettings(anonymized_telemetry=False),
            )

        try:
            try:
                made = client()
            except NotFoundError:  # a database (or tenant) of its own for this team: create it once
                self._create_database()
                made = client()
        except (ValueError, httpx.HTTPError) as exc:
            raise self._unreachable(str(exc)) from None
        session = getattr(getattr(made, "_server", None), "_session", None)
        if isinstance(session, httpx.Client):  # chromadb's client waits forever by default
            session.timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0))
        return made

    def _create_database(self) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        admin = chromadb.AdminClient(
            ChromaSettings(
                chroma_api_impl="chromadb.api.fastapi.FastAPI",
                chroma_server_host=self.host,
                chroma_server_http_port=self.port,
                chroma_server_ssl_enabled=self.ssl,
                chroma_server_headers=self.headers or None,
                anonymized_telemetry=False,
            )
        )
        try:
            admin.get_tenant(self.tenant)
        except Exception:
            log.info("creating tenant %s on %s", self.tenant, self.url)
            admin.create_tenant(self.tenant)
        log.info("creating database %s on %s", self.database, self.url)
        admin.create_database(self.database, tenant=self.tenant)

    # --- every call ---------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried on a dropped connection or timeout (reconnecting: the server may have
        restarted) and once when the collection vanished; then one clear error."""
        import httpx
        from chromadb.errors import ChromaError, NotFoundError

        attempt = 0
        recreated = False
        while True:
            try:
                return fn()
            except StoreUnavailableError as exc:  # from _connect: the server is not there
                error: Exception = exc
            except httpx.TimeoutException:
                error = self._too_slow(what, self.timeout)
            except httpx.TransportError as exc:
                error = self._unreachable(str(exc) or type(exc).__name__)
            except NotFoundError as exc:
                if recreated:
                    raise IndexCorruptError(f"The Chroma server at {self.url}: {exc}") from None
                log.warning("collection %s vanished from %s: recreating it", self.collection_name, self.url)
                recreated = True
                self._collection = None
                continue
            except ChromaError as exc:
                raise IndexCorruptError(
                    f"The Chroma server at {self.url} refused a {what} ({type(exc).__name__}: {exc})."
                ) from None
            if attempt >= self.retries:
                raise error
            delay = self.backoff * 2**attempt
            log.debug(
                "Chroma server at %s failed (%s); retrying in %.1f s", self.url, type(error).__name__, delay
            )
            time.sleep(delay)
            attempt += 1
            self.close()  # reconnect: the server may have restarted (or moved its collection)

    # --- the Store protocol (the rest is ChromaCollection's) -----------------------------------------------
    def _link(self, ids: list[str], vectors: np.ndarray, metadatas: list[Metadata]) -> None:
        """Every vector just written must be found by a search. Chroma 1.5.9's server can store a record and
        leave it out of its vector index when a query arrives at that moment (``get`` returns it, no ``query``
        ever does: chroma-core/chroma#7758; seen in 2 of 30 replays of kb's writes beside a reader, never
        embedded). So each vector is looked up by itself, and one its own search does not return is written
        again, which links it in. One batched query per written batch."""
        for _ in range(LINK_TRIES):
            lost = self._unsearchable(ids, vectors)
            if not lost:
                return
            log.info(
                "%d of %d vectors just written were not searchable: writing them again", len(lost), len(ids)
            )
            ids, vectors, metadatas = [ids[n] for n in lost], vectors[lost], [metadatas[n] for n in lost]
            self._write(ids, vectors, metadatas)
        lost = self._unsearchable(ids, vectors)
        reached = self._in_index([ids[n] for n in lost], vectors[lost]) if lost else []
        if any(reached):
            log.debug("%d vectors are found only by a search restricted to them", sum(reached))
        ids = [ids[n] for n, ok in zip(lost, reached, strict=True) if not ok]
        if ids:
            log.warning(
                "%d vectors written to collection %s on %s are stored but not found by a search (a Chroma "
                "server bug); delete that collection on the server and run kb index: it is refilled from the "
                "cached vectors without embedding",
                len(ids),
                self.collection_name,
                self.url,
            )

    def _unsearchable(self, ids: list[str], vectors: np.ndarray) -> list[int]:
        """Positions of ``ids`` that a search for their own vector does not return (when more than
        ``LINK_CHECK`` stored vectors equal one, a search cannot tell: it counts as found)."""
        res = self._col(
            "write",
            lambda c: c.query(query_embeddings=vectors, n_results=LINK_CHECK, include=["distances"]),
        )
        return [
            n
            for n, (got, dist) in enumerate(zip(res["ids"], res["distances"], strict=True))
            if ids[n] not in got and not (len(got) == LINK_CHECK and dist[-1] <= 1e-6)
        ]

    def _in_index(self, ids: list[str], vectors: np.ndarray) -> list[bool]:
        """Whether a search restricted to its own id finds each vector: it is in the vector index, only out of
        reach of an unrestricted search. The index is approximate: at 60,000 random vectors, 1.3 % were
        returned by no unrestricted search (10 or 100 neighbours alike) and found by this one; writing them
        again did not change that."""
        found = []
        for i, v in zip(ids, vectors, strict=True):
            res = self._col(
                "write",
                lambda c, i=i, v=v: c.query(
                    query_embeddings=v.reshape(1, -1), ids=[i], n_results=1, include=["distances"]
                ),
            )
            found.append(i in res["ids"][0])
        return found

    def check(self) -> None:
        """Reachable (else :class:`StoreUnavailableError`, which is not damage) and readable."""
        self.count()

    def reopen(self) -> None:
        """Nothing to do: a server shows every client its current state (a dropped connection reconnects by
        itself, in :meth:`_call`)."""

    def reset(self) -> str:
        """A collection that cannot be read is dropped and recreated empty (the next run refills it)."""
        try:
            self._call("reset", lambda: self._ensure_client().delete_collection(self.collection_name))
        except IndexCorruptError:
            pass  # already gone
        self._collection = None
        return f"collection {self.collection_name} recreated on {self.url}"

    def status(self) -> StoreStatus:
        st = super().status()
        st.tenant, st.database = self.tenant, self.database
        return st
