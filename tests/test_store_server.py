"""kb on a real Chroma server (``chroma run``): the same index, namespaced per workspace, and its faults.

The server is a real process on loopback (the ``chroma_server`` fixture); fault tests stop, kill, pause and
restart it. The fake embedder keeps these fast: they claim nothing about retrieval quality (``KB_TEST_STORE=
server`` runs the real-model suites against a server too).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from kb import KnowledgeBase
from kb.backends.chroma_server import ChromaServerStore
from kb.errors import StoreUnavailableError
from kb.testing import FakeEmbedder, free_port, run_kb, small_workspace, wait_for, watcher_thread
from kb.testing.services import ChromaServer, fake_kb


@pytest.fixture
def on_server(chroma_server: ChromaServer, monkeypatch: pytest.MonkeyPatch) -> ChromaServer:
    monkeypatch.setenv("KB_CHROMA_URL", chroma_server.url)
    return chroma_server


def consistent(kb: KnowledgeBase) -> set[str]:
    ids = kb.engine.manifest().all_chunk_ids()
    assert kb.engine.store.ids() == ids, "the server's collection holds exactly the manifest's chunks"
    return ids


def server_collections(url: str) -> list[str]:
    import chromadb

    port = int(url.rsplit(":", 1)[1])
    return sorted(c.name for c in chromadb.HttpClient(host="127.0.0.1", port=port).list_collections())


def test_incremental_index_on_server(on_server: ChromaServer, tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    emb = FakeEmbedder()
    with KnowledgeBase.open(ws, embedder=emb) as kb:
        first = kb.index()
        assert first.chunks_embedded == first.chunks_total > 0
        consistent(kb)
        assert not (ws / ".workos/.kb/chroma").exists(), "no embedded folder when a server is configured"
        assert kb.search("Ada owns billing", k=1)[0].path == ".workos/context/team.md"
        answer = kb.ask("Who owns billing?", persona="backend-engineer")
        assert answer.abstained or answer.citations[0].path == ".workos/context/team.md"
        emb.calls.clear()
        os.utime(ws / "projects/prds/doc1.md")
        (ws / "projects/prds/doc2.md").rename(ws / "projects/prds/moved.md")
        (ws / "projects/prds/doc3.md").unlink()
        again = kb.index()
        assert again.chunks_embedded == 0 and emb.calls == [], "touch and rename embed nothing"
        assert again.renamed == [("projects/prds/doc2.md", "projects/prds/moved.md")]
        assert again.removed == ["projects/prds/doc3.md"]
        consistent(kb)
        st = kb.status()
        assert st.store is not None and st.store.kind == "server" and st.store.location == on_server.url
        assert st.store.collections == [st.store.collection] and st.store.vectors == st.chunks_count
    # a model change rebuilds into a new collection and drops the old one
    with KnowledgeBase.open(ws, embedder=FakeEmbedder(), chunk_max_tokens=64) as kb:
        report = kb.index()
        assert report.rebuilt
        consistent(kb)
        assert kb.status().store.collections == [kb.engine.store.status().collection]  # type: ignore[union-attr]


def test_two_workspaces_on_one_server_never_mix(on_server: ChromaServer, tmp_path: Path) -> None:
    a = small_workspace(tmp_path / "a")
    b = small_workspace(tmp_path / "b")
    (b / "projects/prds/doc0.md").write_text("# Secret\n\nZebra quartz launch codes live in vault nine.\n")
    with (
        KnowledgeBase.open(a, embedder=FakeEmbedder()) as ka,
        KnowledgeBase.open(b, embedder=FakeEmbedder()) as kb_,
    ):
        ka.index()
        kb_.index()
        assert ka.engine.workspace.workspace_id() != kb_.engine.workspace.workspace_id()
        for mode in ("dense", "hybrid"):
            assert all(
                "Zebra" not in h.text for h in ka.search("Zebra quartz launch codes vault", k=20, mode=mode)
            )
        assert "Zebra" in kb_.search("Zebra quartz launch codes vault", k=1)[0].text
        mine = ka.status().store
        assert (
            mine is not None
            and mine.collections
            and all(n.startswith(f"kb_{ka.engine.workspace.workspace_id()}_") for n in mine.collections)
        )
        assert len(server_collections(on_server.url)) == 2
    # A rebuilds with other settings: its old collection goes, B's stays and still answers
    with KnowledgeBase.open(a, embedder=FakeEmbedder(), chunk_max_tokens=64) as ka:
        ka.index()
    assert len(server_collections(on_server.url)) == 2
    with KnowledgeBase.open(b, embedder=FakeEmbedder()) as kb_:
        assert "Zebra" in kb_.search("Zebra quartz launch codes vault", k=1, mode="dense")[0].text
        consistent(kb_)


def test_moved_workspace_keeps_its_index_and_a_copy_gets_its_own(
    on_server: ChromaServer, tmp_path: Path
) -> None:
    ws = small_workspace(tmp_path / "here")
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kb.index()
        wsid = kb.engine.workspace.workspace_id()
    moved = tmp_path / "there"
    shutil.move(str(ws), moved)
    emb = FakeEmbedder()
    with KnowledgeBase.open(moved, embedder=emb) as kb:
        assert kb.search("Ada owns billing", k=1, mode="dense")[0].path == ".workos/context/team.md"
        assert kb.engine.workspace.workspace_id() == wsid
        assert kb.index().chunks_embedded == 0
        consistent(kb)
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    with KnowledgeBase.open(copy, embedder=emb) as kc:
        assert kc.engine.workspace.workspace_id() != wsid, (
            "a copy must not write into the original's collection"
        )
        report = kc.index()
        assert report.chunks_embedded == 0 and report.repaired, "filled from the manifest's cached vectors"
        consistent(kc)
    with KnowledgeBase.open(moved, embedder=emb) as kb:
        consistent(kb)


def test_missing_collection_is_refilled_without_embedding(on_server: ChromaServer, tmp_path: Path) -> None:
    import chromadb

    ws = small_workspace(tmp_path)
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kb.index()
        name = kb.engine.store.status().collection
    chromadb.HttpClient(host="127.0.0.1", port=on_server.port).delete_collection(name)
    emb = FakeEmbedder()
    with KnowledgeBase.open(ws, embedder=emb) as kb:
        report = kb.index()
        assert report.repaired and report.chunks_embedded == 0 and emb.calls == []
        consistent(kb)
        assert kb.search("Ada owns billing", k=1, mode="dense")[0].path == ".workos/context/team.md"


def test_server_down_at_start_is_one_line_naming_the_url(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    for verb in ("index", "watch"):
        done = run_kb(verb, "--workspace", ws, env={"KB_CHROMA_URL": url}, timeout=120)
        assert done.returncode == 1, done.stderr
        # the one error line (a first run on a fresh model cache also logs the model's one-time export)
        lines = [line for line in done.stderr.strip().splitlines() if " INFO " not in line]
        assert len(lines) == 1 and url in lines[0] and "chroma run" in lines[0], done.stderr
    # an index built elsewhere (embedded here), searched through a server that is down: the same error
    assert fake_kb("index", ws).returncode == 0
    done = fake_kb("search", ws, "billing", env={"KB_CHROMA_URL": url})
    assert (
        done.returncode == 1
        and f"StoreUnavailableError: Cannot reach the Chroma server at {url}" in done.stderr
    )


def test_server_killed_mid_index_commits_nothing_and_the_next_run_completes(
    on_server: ChromaServer, tmp_path: Path
) -> None:
    ws = small_workspace(tmp_path)
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kb.index()
        before = kb.engine.manifest().all_chunk_ids()
    for i in range(40):
        (ws / f"projects/prds/new{i}.md").write_text(
            f"# New {i}\n\nWalrus {i} banana.\n\n## More\n\nKiwi {i}.\n"
        )

    class KillingEmbedder(FakeEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            if len(self.calls) >= 32:
                on_server.kill()
            return super().embed(texts)

    with KnowledgeBase.open(
        ws, embedder=KillingEmbedder(), store={"url": on_server.url, "retries": 1, "timeout": 5}
    ) as kb:
        with pytest.raises(StoreUnavailableError, match=on_server.url):
            kb.index()
        assert kb.engine.manifest().all_chunk_ids() == before, "nothing half-committed"
    on_server.start()  # same folder, same port
    emb = FakeEmbedder()
    with KnowledgeBase.open(ws, embedder=emb) as kb:
        report = kb.index()
        assert len(report.added) == 40
        assert report.chunks_embedded < 80, "vectors embedded before the crash were kept"
        consistent(kb)
        assert kb.search("Walrus 7 banana", k=1)[0].path == "projects/prds/new7.md"


def test_hung_server_times_out_and_a_restarted_one_reconnects(
    on_server: ChromaServer, tmp_path: Path
) -> None:
    ws = small_workspace(tmp_path)
    with KnowledgeBase.open(
        ws, embedder=FakeEmbedder(), store={"url": on_server.url, "timeout": 1, "retries": 1}
    ) as kb:
        kb.index()
        assert kb.search("Ada owns billing", k=1, mode="dense")
        on_server.pause()  # accepts connections, never answers
        try:
            with pytest.raises(StoreUnavailableError, match="did not answer"):
                kb.search("Ada owns billing", k=1, mode="dense")
        finally:
            on_server.resume()
        assert kb.search("Ada owns billing", k=1, mode="dense")[0].path == ".workos/context/team.md"
        on_server.restart()  # a new server process on the same folder: the same object goes on
        assert kb.search("Ada owns billing", k=1, mode="dense")[0].path == ".workos/context/team.md"
        (ws / "projects/prds/late.md").write_text("# Late\n\nQuokka ledger arrives late.\n")
        assert kb.index().added == ["projects/prds/late.md"]
        consistent(kb)


def test_watch_keeps_changes_while_the_server_is_down(on_server: ChromaServer, tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with watcher_thread(ws) as (w, _emb, _events):
        on_server.kill()
        for i in range(5):
            (ws / f"projects/prds/while-down-{i}.md").write_text(f"# Down {i}\n\nPangolin {i} waits.\n")
        (ws / "projects/prds/doc0.md").unlink()
        wait_for(lambda: w.outage.down and w.pending >= 1, 60)
        st = w.status()
        assert st.store_down_since and st.next_retry_at and st.pending >= 1
        assert st.last_error and on_server.url in st.last_error
        on_server.start()
        wait_for(lambda: not w.outage.down, 90)
        manifest = w.engine.manifest().sources()
        assert {f"projects/prds/while-down-{i}.md" for i in range(5)} <= set(manifest)
        assert "projects/prds/doc0.md" not in manifest
        assert w.status().pending == 0 and w.last_error is None
    # watcher_thread checked on exit that the server's collection holds exactly the manifest's chunks


def test_status_names_the_server(on_server: ChromaServer, tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    from kb.cli.render import print_status
    from kb.models import Status

    ws = small_workspace(tmp_path)
    assert fake_kb("index", ws).returncode == 0
    done = fake_kb("status", ws)
    assert done.returncode == 0, done.stderr
    st = Status.from_dict(json.loads(done.stdout))
    assert st.store is not None and st.store.kind == "server" and st.store.location == on_server.url
    assert st.store.collections == [st.store.collection] and st.store.vectors == st.chunks_count > 0
    out = StringIO()
    print_status(Console(file=out, width=200), st)
    assert f"server {on_server.url}" in out.getvalue() and st.store.collection in out.getvalue()


# --- an authenticating proxy in front of Chroma -------------------------------------------------------------
class _Proxy(BaseHTTPRequestHandler):
    server: TokenProxy

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        if self.headers.get("X-Team-Token") != self.server.token:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.seen += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        keep = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "x-team-token", "content-length")
        }
        r = httpx.request(
            self.command, self.server.upstream + self.path, content=body, headers=keep, timeout=30
        )
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815


class TokenProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, token: str):
        super().__init__(("127.0.0.1", 0), _Proxy)
        self.upstream, self.token, self.seen = upstream, token, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def proxy(chroma_server: ChromaServer) -> Iterator[TokenProxy]:
    srv = TokenProxy(chroma_server.url, "s3cret-team-token")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_headers_reach_an_authenticating_proxy_and_are_never_printed(
    proxy: TokenProxy, tmp_path: Path
) -> None:
    ws = small_workspace(tmp_path)
    env = {"KB_CHROMA_URL": proxy.url}
    refused = fake_kb("index", ws, env=env)
    assert (
        refused.returncode != 0
        and "refused kb (HTTP 401)" in refused.stderr
        and "KB_CHROMA_HEADERS" in refused.stderr
    )
    env["KB_CHROMA_HEADERS"] = json.dumps({"X-Team-Token": proxy.token})
    done = fake_kb("index", ws, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert proxy.seen > 0
    config = run_kb("config", "--json", "--workspace", ws, env=env)
    assert config.returncode == 0 and proxy.token not in config.stdout + config.stderr
    status = fake_kb("status", ws, env=env)
    assert status.returncode == 0 and proxy.token not in status.stdout + status.stderr
    assert json.loads(status.stdout)["store"]["vectors"] > 0


def test_every_vector_written_beside_a_searching_reader_is_searchable(chroma_server: ChromaServer) -> None:
    """Chroma 1.5.9's server can store a record and leave it out of its vector index when a query arrives at
    that moment (chroma-core/chroma#7758): ``get`` returns it, no search ever does. kb's writes in the shape
    of an incremental run (unchanged chunks of an edited file written again, new ones, deletions) beside a
    client that searches without pause: after each run, every stored vector is found by a search for itself.
    (Without the check after each write, 2 of 30 such replays lost a vector.)"""
    import random

    import numpy as np

    rng = random.Random(5)
    words = [f"{a}{b}{n}" for a in "klmnprstvz" for b in "aeiou" for n in range(40)]

    def vectors(n: int) -> tuple[list[str], np.ndarray]:
        texts = [" ".join(rng.choice(words) for _ in range(14)) for _ in range(n)]
        return [f"{rng.getrandbits(96):024x}" for _ in texts], FakeEmbedder().embed(texts)

    lost: list[tuple[int, list[str]]] = []
    for trial in range(40):
        store = ChromaServerStore(chroma_server.url, f"kb_link_{trial}", prefix="kb_link_")
        reader = ChromaServerStore(chroma_server.url, f"kb_link_{trial}", prefix="kb_link_")
        ids, vecs = vectors(27)
        live = dict(zip(ids, vecs, strict=True))
        store.upsert(ids, vecs, [{"path": "a.md"}] * len(ids))
        stop = threading.Event()

        def search(stop: threading.Event, reader: ChromaServerStore, probe: np.ndarray) -> None:
            while not stop.is_set():
                reader.query(probe, 8)

        thread = threading.Thread(target=search, args=(stop, reader, vecs[0]))
        thread.start()
        try:
            for _ in range(2):
                again = rng.sample(sorted(live), 3)
                new_ids, new_vecs = vectors(4)
                up = again + new_ids
                store.upsert(up, np.stack([live[i] for i in again] + list(new_vecs)), [{"path": "a.md"}] * 7)
                live.update(zip(new_ids, new_vecs, strict=True))
                gone = rng.sample(sorted(set(live) - set(up)), 3)
                store.delete(gone)
                for i in gone:
                    live.pop(i)
        finally:
            stop.set()
            thread.join()
        missing = [i for i, v in live.items() if i not in [c for c, _ in reader.query(v, 10)]]
        if missing:
            lost.append((trial, missing))
        store.close()
        reader.close()
    assert not lost, f"stored but not searchable (trial, ids): {lost}"


def over(collection: object) -> ChromaServerStore:
    """A server store whose collection is ``collection`` (a stand-in: no server, no network)."""
    store = ChromaServerStore("http://127.0.0.1:9", "kb_x", prefix="kb_")
    store._collection, store._max_batch = collection, 1000
    store._call = lambda what, fn: fn()  # type: ignore[method-assign]
    return store


def answer(found: list[str], n: int) -> dict[str, object]:
    """A query result: ``found`` for each of ``n`` query vectors."""
    return {"ids": [found] * n, "distances": [[0.5] * len(found)] * n}


def test_a_written_vector_the_server_does_not_find_is_written_again(caplog: pytest.LogCaptureFixture) -> None:
    """The check after each write, on a stand-in collection that leaves one record out of its search the first
    time (as the Chroma server does): that record alone is written again, and the check passes after it."""
    import numpy as np

    class Collection:
        def __init__(self) -> None:
            self.rows: dict[str, np.ndarray] = {}
            self.hidden = {"b"}
            self.upserts: list[list[str]] = []

        def upsert(self, ids: list[str], embeddings: np.ndarray, metadatas: list[dict[str, str]]) -> None:
            self.upserts.append(list(ids))
            self.rows.update(zip(ids, embeddings, strict=True))
            if len(self.upserts) > 1:
                self.hidden.clear()  # written again: now in the index

        def query(
            self, query_embeddings: np.ndarray, n_results: int, include: list[str]
        ) -> dict[str, object]:
            return answer([i for i in self.rows if i not in self.hidden][:n_results], len(query_embeddings))

    col = Collection()
    store = over(col)
    vectors = np.eye(3, dtype=np.float32)
    with caplog.at_level("INFO", logger="kb.backends.chroma_server"):
        store.upsert(["a", "b", "c"], vectors, [{"path": "x.md"}] * 3)
    assert col.upserts == [["a", "b", "c"], ["b"]]
    assert "1 of 3 vectors just written were not searchable" in caplog.text


def test_a_vector_only_an_id_restricted_search_reaches_is_not_reported_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Chroma's vector index is approximate: at 60,000 random vectors, 1.3 % were returned by no unrestricted
    search (10 or 100 neighbours alike) yet found by a search restricted to their id, and writing them again
    did not change that (bench_store's 300k run warned 256 times). Such a vector is tried again like any
    other, but it is in the index: no warning that tells the user to rebuild."""
    import numpy as np

    from kb.backends.chroma_server import LINK_TRIES

    class Collection:
        def __init__(self) -> None:
            self.rows: list[str] = []
            self.upserts: list[list[str]] = []
            self.left_out = ""  # a record no search finds

        def upsert(self, ids: list[str], embeddings: np.ndarray, metadatas: list[dict[str, str]]) -> None:
            self.upserts.append(list(ids))
            self.rows += [i for i in ids if i not in self.rows]

        def query(
            self,
            query_embeddings: np.ndarray,
            n_results: int,
            include: list[str],
            ids: list[str] | None = None,
        ) -> dict[str, object]:
            rows = [i for i in self.rows if i != self.left_out]
            found = [i for i in rows if (i in ids if ids else i != "b")][:n_results]
            return answer(found, len(query_embeddings))

    col = Collection()
    store = over(col)
    with caplog.at_level("INFO", logger="kb.backends.chroma_server"):
        store.upsert(["a", "b", "c"], np.eye(3, dtype=np.float32), [{"path": "x.md"}] * 3)
    assert col.upserts == [["a", "b", "c"]] + [["b"]] * LINK_TRIES
    assert "not found by a search" not in caplog.text
    col.left_out = "b"  # now truly left out of the index: that is reported
    with caplog.at_level("INFO", logger="kb.backends.chroma_server"):
        store._link(["b"], np.eye(3, dtype=np.float32)[1:2], [{"path": "x.md"}])
    assert "1 vectors written to collection" in caplog.text
