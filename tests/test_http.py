"""``kb serve``'s HTTP side: the JSON API, its security layer, the remote CLI and the background refresh.

A real :class:`kb.serve.watcher.Watcher` (real watchdog and Chroma, fake embedder) answers through a real
uvicorn server on a loopback port; clients are httpx, raw sockets and real ``kb`` subprocesses. The end-to-end
tests run the real ``kb serve`` command with the real model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kb.models import ResourceInfo
from kb.serve.http import READY, HttpServer, ServeOptions, bind, build_app, check_bind, mcp_endpoint
from kb.serve.http_api import DEADLINES
from kb.serve.http_owner import OwnerService
from kb.serve.http_security import Policy
from kb.serve.refresh import ResourceRefresher
from kb.serve.tools import Tools
from kb.serve.watcher import Watcher
from kb.testing import (
    Background,
    WebMirror,
    kb_command,
    run_kb,
    small_workspace,
    verify_citation,
    wait_for,
    watcher_thread,
)

TOKEN = "test-token-0123456789abcdef"


@contextlib.contextmanager
def served(
    ws: Path, *, host: str = "127.0.0.1", head_timeout: float = 10.0, resources: Any = None, **policy: Any
) -> Iterator[tuple[str, Watcher]]:
    """The workspace served over HTTP in this process: (base URL on 127.0.0.1, the watcher)."""
    with watcher_thread(ws) as (watcher, _, _):
        sock = bind(host, 0)
        port = sock.getsockname()[1]
        service = OwnerService(watcher)
        mcp = mcp_endpoint(service, ServeOptions(host=host), port)
        app = build_app(service, Policy(port=port, **policy), resources=resources, mcp=mcp)
        server = HttpServer(app, sock, ServeOptions(head_timeout=head_timeout)).start()
        try:
            yield f"http://127.0.0.1:{port}", watcher
        finally:
            server.stop()


def raw(url: str, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes; (status, body) of the reply (paths are sent exactly as written, no normalising)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def get(url: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    netloc = host or url.removeprefix("http://")
    return raw(url, f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nConnection: close\r\n\r\n".encode())


# --- the API ------------------------------------------------------------------------------------------------
def test_api_answers_with_the_cli_json_shapes(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with served(ws) as (url, watcher):
        tools = Tools(OwnerService(watcher), watcher.engine.workspace)
        r = httpx.post(f"{url}/v1/search", json={"query": "alpha beta", "k": 3, "type": "prd"})
        assert r.status_code == 200 and r.json() == tools.search("alpha beta", 3, type="prd")
        assert {h["source_type"] for h in r.json()["hits"]} == {"prd"} and len(r.json()["hits"]) == 3
        asked = httpx.post(f"{url}/v1/ask", json={"question": "Who owns billing?", "persona": "auto"}).json()
        assert set(asked) >= {"question", "persona", "persona_title", "answer", "abstained", "sentences"}
        status = httpx.get(f"{url}/v1/status").json()
        assert status["sources_count"] == 5 and status["watcher"]["running"] is True
        assert httpx.get(f"{url}/v1/personas").json() == tools.personas()
        src = httpx.get(f"{url}/v1/sources/projects/prds/doc1.md", params={"start": 3, "end": 3}).json()
        assert src["text"] == "Alpha beta gamma 1." and src["start_line"] == src["end_line"] == 3
        spec = httpx.get(f"{url}/v1/openapi.json").json()
        assert spec["openapi"].startswith("3.1") and {"/v1/search", "/v1/ask", "/v1/sources/{path}"} <= set(
            spec["paths"]
        )
        (ws / "projects/prds/doc9.md").write_text("# Doc 9\n\nZebra quagga okapi.\n")
        report = httpx.post(f"{url}/v1/index").json()
        assert "chunks_embedded" in report and report["chunks_total"] > 0
        wait_for(
            lambda: (
                httpx.post(f"{url}/v1/search", json={"query": "quagga okapi"}).json()["hits"][0]["path"]
                == "projects/prds/doc9.md"
            ),
            timeout=10,
        )


def test_parameters_are_validated_with_json_errors(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with served(ws, max_body=4096) as (url, _):
        bad = {
            "k out of range": {"query": "alpha", "k": 1000},
            "k not an integer": {"query": "alpha", "k": "3"},
            "empty query": {"query": "  "},
            "unknown field": {"query": "alpha", "limit": 3},
            "bad mode": {"query": "alpha", "mode": "magic"},
            "bad type": {"query": "alpha", "type": ["secret"]},
        }
        for case, body in bad.items():
            r = httpx.post(f"{url}/v1/search", json=body)
            assert r.status_code == 400, case
            assert r.json()["error"]["type"] == "BadRequest" and r.json()["error"]["exit_code"] == 2, case
        r = httpx.post(f"{url}/v1/search", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/search", content=b'{"query": "x"}', headers={"content-type": "text/plain"})
        assert r.status_code == 400, "a form post (no JSON content type) is refused"
        r = httpx.post(f"{url}/v1/ask", json={"question": "x", "llm": "llama-cpp:/etc/passwd"})
        assert r.status_code == 400 and "file" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/ask", json={"question": "x", "persona": "nobody"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "PersonaNotFoundError"
        r = httpx.post(f"{url}/v1/search", json={"query": "a" * 5000})
        assert r.status_code == 413, "a body over the limit"
        r = httpx.get(f"{url}/v1/status", params={"pad": "x" * 3000})
        assert r.status_code == 414
        assert httpx.get(f"{url}/v1/nothing").status_code == 404
        assert httpx.get(f"{url}/v1/search").status_code == 405
        assert httpx.get(f"{url}/v1/sources/projects/prds/doc1.md", params={"start": "x"}).status_code == 400


def test_source_views_refuse_traversal_absolute_paths_and_secrets(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    (ws / "outside/notes.md").write_text("# Not indexed\n\nprivate\n")
    (ws / "projects/prds/.env").write_text("API_KEY=hunter2\n")
    (ws / "projects/prds/id_rsa").write_text("-----BEGIN KEY-----\n")
    with served(ws) as (url, _):
        refused = {
            "/v1/sources/../outside/notes.md": 403,
            "/v1/sources/projects/../../../etc/passwd": 403,
            "/v1/sources/%2e%2e/%2e%2e/etc/passwd": 403,
            "/v1/sources//etc/passwd": 403,
            "/v1/sources/%2Fetc%2Fpasswd": 403,
            "/v1/sources/projects/prds/.env": 403,
            "/v1/sources/projects/prds/id_rsa": 403,
            "/v1/sources/.workos/.kb/manifest.sqlite": 403,
            "/v1/sources/outside/notes.md": 404,  # inside the workspace, but not an indexed source
            "/v1/sources/projects/prds/nope.md": 404,
        }
        for path, expected in refused.items():
            status, body = get(url, path)
            assert status == expected, (path, status, body)
            assert b"hunter2" not in body and b"root:" not in body and b"private" not in body
        status, body = get(url, "/v1/sources/projects/prds/doc0.md")
        assert status == 200 and json.loads(body)["text"].startswith("# Doc 0")


def test_mcp_is_served_at_mcp_with_the_same_tools(tmp_path: Path) -> None:
    import anyio
    from mcp import Client

    ws = small_workspace(tmp_path)
    with served(ws) as (url, watcher):

        async def session() -> tuple[set[str], Any]:
            async with Client(f"{url}/mcp/") as client:
                tools = {t.name for t in (await client.list_tools()).tools}
                result = await client.call_tool("search", {"query": "alpha beta", "k": 2})
                return tools, result

        names, result = anyio.run(session)
        assert {"search", "ask", "read_source", "status", "personas"} <= names
        assert not result.is_error and "projects/prds/doc" in json.dumps(result.structured_content)
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        foreign = httpx.post(f"{url}/mcp/", json=body, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403


# --- origin, host, token ------------------------------------------------------------------------------------
def test_foreign_origin_bad_host_and_no_cors(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with served(ws) as (url, _):
        netloc = url.removeprefix("http://")
        ok = httpx.get(f"{url}/v1/status", headers={"Origin": url})
        assert ok.status_code == 200
        assert httpx.get(f"{url}/v1/status", headers={"Origin": f"http://localhost:{netloc.split(':')[1]}"})
        for origin in ("http://evil.example", "null", f"http://{netloc}.evil.example", "https://127.0.0.1:1"):
            r = httpx.post(f"{url}/v1/search", json={"query": "alpha"}, headers={"Origin": origin})
            assert r.status_code == 403 and r.json()["error"]["type"] == "AccessDeniedError", origin
        r = httpx.get(f"{url}/v1/status", headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        for host in ("evil.example", f"evil.example:{netloc.split(':')[1]}", "127.0.0.1:1", "localhost"):
            status, body = get(url, "/v1/status", host=host)
            assert status == 403 and b"Host" in body, host
        status, _ = get(url, "/", host="rebind.attacker.example")
        assert status == 403, "the page too: a DNS-rebinding page never loads"
        pre = httpx.options(
            f"{url}/v1/search",
            headers={"Origin": url, "Access-Control-Request-Method": "POST"},
        )
        for r in (ok, pre, httpx.get(url + "/")):
            assert not any(k.lower().startswith("access-control-") for k in r.headers), r.headers


def test_security_headers_on_every_response(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with served(ws) as (url, _):
        for r in (
            httpx.get(url + "/"),
            httpx.get(url + "/app.js"),
            httpx.get(f"{url}/v1/status"),
            httpx.get(f"{url}/v1/nope"),
            httpx.post(f"{url}/v1/search", json={"query": ""}),
        ):
            csp = r.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
            assert "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        page = httpx.get(url + "/").text
        assert "<script>" not in page and "style=" not in page and "http" not in page.split("<body>")[1]
        assert httpx.get(url + "/app.js").headers["content-type"].startswith("text/javascript")


def test_bind_beyond_loopback_needs_a_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(Exception, match="needs a token"):
            check_bind(host, None)
    with pytest.raises(Exception, match="not an IP address"):
        check_bind("example.org", TOKEN)
    check_bind("127.0.0.2", None)
    check_bind("0.0.0.0", TOKEN)
    r = run_kb("serve", "--workspace", small_workspace(tmp_path), "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 1 and "needs a token" in r.stderr and "Traceback" not in r.stderr
    short = run_kb("serve", "--workspace", tmp_path / "small", "--port", "0", env={"KB_SERVE_TOKEN": "abc"})
    assert short.returncode == 1 and "too short" in short.stderr and "abc" not in short.stderr


def test_kb_serve_refuses_a_taken_port_and_a_second_owner(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = run_kb("serve", "--workspace", ws, "--port", str(taken.getsockname()[1]))
    assert r.returncode == 1 and "Cannot listen on" in r.stderr and "Traceback" not in r.stderr
    with watcher_thread(ws):
        r = run_kb("serve", "--workspace", ws, "--port", "0", "--no-resources")
    assert r.returncode == 4 and "already running" in r.stderr and "Traceback" not in r.stderr


def test_token_on_a_non_loopback_bind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bound to 0.0.0.0 (reached here over loopback only) with a token: every API call needs it."""
    caplog.set_level(logging.DEBUG)
    ws = small_workspace(tmp_path)
    with served(ws, host="0.0.0.0", token=TOKEN) as (url, _):
        assert httpx.get(url + "/").status_code == 200, "the page holds no data: it loads, then asks for it"
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789ab"}, {"Authorization": TOKEN}):
            r = httpx.get(f"{url}/v1/status", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text and "wrong-token" not in r.text
            r = httpx.post(f"{url}/v1/search", json={"query": "alpha"}, headers=headers)
            assert r.status_code == 401
            rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            assert httpx.post(f"{url}/mcp/", json=rpc, headers=headers).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/v1/status", headers=good).status_code == 200
        r = httpx.post(f"{url}/v1/search", json={"query": "alpha"}, headers=good)
        assert r.status_code == 200 and r.json()["hits"]
    assert TOKEN not in caplog.text


def test_rate_limit_per_client(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with served(ws, rate=0.5, burst=3) as (url, _):
        codes = [httpx.get(f"{url}/v1/status").status_code for _ in range(3)]
        assert codes == [200] * 3
        limited = httpx.get(f"{url}/v1/status")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["message"].startswith("Too many requests")
        assert httpx.get(url + "/").status_code == 200, "the static page is not rate limited"
        time.sleep(2.1)
        assert httpx.get(f"{url}/v1/status").status_code == 200, "the bucket refills"


def test_slow_and_silent_clients_do_not_block_others(tmp_path: Path) -> None:
    """Slow-loris: while 40 connections hang in their request head (and one in its body), everyone else is
    served at once; the hanging ones are closed after the head (body) timeout."""
    ws = small_workspace(tmp_path)
    with served(ws, head_timeout=6.0, body_timeout=6.0) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        lorises = []
        for i in range(40):
            s = socket.create_connection((host, int(port)), timeout=20)
            if i % 2:  # half send a partial head, half nothing at all
                s.sendall(f"GET /v1/status HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
            lorises.append(s)
        slow_body = socket.create_connection((host, int(port)), timeout=20)
        slow_body.sendall(
            f"POST /v1/search HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{".encode()
        )
        started = time.monotonic()
        for _ in range(5):
            r = httpx.post(f"{url}/v1/search", json={"query": "alpha beta"}, timeout=5)
            assert r.status_code == 200
        assert time.monotonic() - started < 5, "others were served while the slow clients hung"
        with selectors.DefaultSelector() as waiting:  # epoll: select() fails on descriptors past 1023
            for s in [*lorises, slow_body]:
                waiting.register(s, selectors.EVENT_READ)
            assert waiting.select(timeout=0) == [], "and the slow ones were still hanging meanwhile"
        for s in lorises:  # then the server closes them: reading gives EOF (or a reset)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1024) == b""
            s.close()
        reply = slow_body.recv(4096)
        assert b" 408 " in reply.split(b"\r\n")[0], reply[:80]
        slow_body.close()
        assert httpx.get(f"{url}/v1/status").status_code == 200


def test_a_slow_answer_on_a_kept_alive_connection_is_not_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head timeout is for the request head only: an answer that takes longer still arrives."""
    slow_search = OwnerService.search

    def search(self: OwnerService, *args: Any, **kwargs: Any) -> Any:
        time.sleep(2.5)
        return slow_search(self, *args, **kwargs)

    monkeypatch.setattr(OwnerService, "search", search)
    ws = small_workspace(tmp_path)
    with served(ws, head_timeout=1.0) as (url, _), httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(2):
            assert http.get("/v1/status").status_code == 200
            time.sleep(1.5)  # the connection idles past the head timeout (not the keep-alive one), then
            assert http.post("/v1/search", json={"query": "alpha"}).status_code == 200
        monkeypatch.setitem(DEADLINES, "search", 1.0)  # but a request past its deadline gets a 504
        late = http.post("/v1/search", json={"query": "alpha"})
        assert late.status_code == 504 and "in time" in late.json()["error"]["message"]
        assert http.get("/v1/status").status_code == 200


# --- the remote CLI -----------------------------------------------------------------------------------------
def test_remote_cli_same_output_and_exit_codes(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with served(ws) as (url, watcher):
        env = {"KB_SERVER": url}
        service = OwnerService(watcher)
        r = run_kb("search", "alpha beta", "-k", "2", "--json", env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == Tools(service, service.workspace).search("alpha beta", 2)
        text = run_kb("search", "alpha beta", "-k", "2", "--server", url, cwd=tmp_path)
        assert text.returncode == 0 and "projects/prds/doc" in text.stdout
        a = run_kb("ask", "Who owns billing?", "--json", env=env, cwd=tmp_path)
        assert a.returncode in (0, 3), a.stderr
        assert json.loads(a.stdout) == service.ask("Who owns billing?", persona="auto").to_dict()
        indexed = run_kb("index", "--json", env=env, cwd=tmp_path)
        assert indexed.returncode == 0 and json.loads(indexed.stdout)["chunks_total"] > 0, indexed.stderr
        st = run_kb("status", "--json", env=env, cwd=tmp_path)
        assert json.loads(st.stdout)["workspace"] == str(ws) and json.loads(st.stdout)["watcher"]["running"]
        abstain = run_kb("ask", "zzzz qqqq xxxx", env=env, cwd=tmp_path)
        assert abstain.returncode == 3 and "nothing in the knowledge base" in abstain.stdout
        no_persona = run_kb("ask", "alpha", "--persona", "nobody", env=env, cwd=tmp_path)
        assert no_persona.returncode == 1 and "No persona named 'nobody'" in no_persona.stderr
        bad = run_kb("search", "   ", env=env, cwd=tmp_path)
        assert bad.returncode == 2 and "empty" in bad.stderr and "Traceback" not in bad.stderr
    gone = run_kb("status", env={"KB_SERVER": url}, cwd=tmp_path)
    assert gone.returncode == 1 and "Cannot reach kb serve" in gone.stderr
    wrong = run_kb("status", env={"KB_SERVER": "ftp://x"}, cwd=tmp_path)
    assert wrong.returncode == 1 and "http(s) URL" in wrong.stderr


def test_remote_cli_sends_the_token(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with served(ws, host="0.0.0.0", token=TOKEN) as (url, _):
        denied = run_kb("status", env={"KB_SERVER": url}, cwd=tmp_path)
        assert denied.returncode == 1 and "needs a token" in denied.stderr
        ok = run_kb(
            "search", "alpha", "--json", env={"KB_SERVER": url, "KB_SERVE_TOKEN": TOKEN}, cwd=tmp_path
        )
        assert ok.returncode == 0 and json.loads(ok.stdout)["hits"]
        assert TOKEN not in ok.stdout + ok.stderr + denied.stderr


# --- resources kept fresh -----------------------------------------------------------------------------------
def test_stale_resources_are_rechecked_in_the_background(tmp_path: Path) -> None:
    from kb.api import KnowledgeBase
    from kb.testing import FakeEmbedder

    ws = small_workspace(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "guide.md").write_text("# Guide\n\nPaginate with opaque cursors.\n")
    with WebMirror({"/site/": site}) as mirror:
        stale, never = f"{mirror.base}/site/guide.md", f"{mirror.base}/site/other.md"
        (ws / "kb.toml").write_text(
            f'[resources]\npersonas = []\nadd = ["{stale}", "{never}"]\nallow_hosts = ["127.0.0.1"]\n'
            "max_age_hours = 0.0003\n"  # about a second
        )
        kb = KnowledgeBase.open(ws, embedder=FakeEmbedder())
        assert {o.status for o in kb.fetch_resources([stale]).resources} == {"fetched"}
        with served(ws, resources=kb.resources) as (url, _):
            refresher = ResourceRefresher(kb.resources, kb.fetch_resources, every=0.5, first_after=0.1)
            listed = httpx.get(f"{url}/v1/resources").json()["resources"]
            assert {r["url"]: r["status"] for r in listed}[never] == "missing"
            before = len(mirror.requests)
            refresher.start()
            try:
                wait_for(lambda: stale in refresher.refreshed, timeout=20)
            finally:
                refresher.stop()
            assert refresher.last_error is None
            assert 304 in mirror.statuses[before:] or 200 in mirror.statuses[before:]
            assert not any(p.endswith("other.md") for p in mirror.requests), (
                "never-fetched ones are left alone"
            )
        kb.close()


def test_refresher_survives_a_failing_listing() -> None:
    calls: list[int] = []

    def broken() -> list[ResourceInfo]:
        calls.append(1)
        raise OSError("disk gone")

    r = ResourceRefresher(broken, lambda urls: None, every=0.05, first_after=0.0).start()
    wait_for(lambda: len(calls) >= 3, timeout=5)
    r.stop()
    assert r.last_error == "OSError: disk gone"


# --- the real command ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kb_serve_end_to_end(indexed: Path, tmp_path: Path) -> None:
    """The real ``kb serve`` (real model): HTTP and the Unix socket answer at once, an edit is searchable
    within seconds, the answer's citations are real, and SIGTERM stops it cleanly."""
    proc = Background(
        kb_command("serve", "--workspace", indexed, "--port", "0", "--no-resources"), tmp_path / "serve.log"
    )
    try:
        proc.wait_for_line(READY, timeout=240)
        url = re.search(r"(http://127\.0\.0\.1:\d+)/", proc.text().split(READY, 1)[1])
        assert url
        base = url.group(1)
        answer = httpx.post(
            f"{base}/v1/ask", json={"question": "How should we paginate the notifications API?"}, timeout=60
        ).json()
        assert not answer["abstained"] and answer["persona_title"]
        for c in answer["citations"]:
            assert verify_citation(indexed, c["path"], c["start_line"], c["end_line"], c["quote"])
        local = run_kb("search", "notification retention", "--json", "--workspace", indexed)
        assert local.returncode == 0 and json.loads(local.stdout)["hits"], "the socket is served too"
        (indexed / "projects/prds/notifications.md").open("a").write("\nThe zebra quota is 42 okapis.\n")
        started = time.monotonic()
        wait_for(
            lambda: (
                "zebra quota"
                in httpx.post(
                    f"{base}/v1/search", json={"query": "zebra quota okapis", "k": 1}, timeout=30
                ).json()["hits"][0]["text"]
            ),
            timeout=30,
        )
        assert time.monotonic() - started < 10
    finally:
        code = proc.stop(signal.SIGTERM, timeout=60)
    assert code == 0, proc.text()[-2000:]
    assert "Traceback" not in proc.text()
