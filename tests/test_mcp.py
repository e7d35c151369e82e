"""kb for agents: the tool layer (kb.serve.tools), the MCP server (kb.serve.mcp) and ``kb mcp``.

* :class:`Tools` directly, on a copy of ``data/`` with the FakeEmbedder: the CLI's JSON shapes, filters,
  argument checks, and ``read_source``'s refusals (``..``, absolute paths, secrets, kb's own files, a source
  swapped for a symlink out of the workspace, files that are not indexed) and caps.
* The MCP server through the SDK's in-memory client (tools and schemas, errors, persona prompts, ``kb://``
  resources) and through Streamable HTTP on a real uvicorn (the contract ``kb serve`` mounts).
* ``kb mcp`` as a real process: raw JSON-RPC on its stdin (nothing but protocol on stdout; it exits when stdin
  closes; it is the client of a running watcher); the README's configuration snippet launched exactly, with
  the SDK's stdio client and the real model (it watches the workspace itself: a saved edit is found).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from kb import KnowledgeBase
from kb.errors import AccessDeniedError, BadRequest, KbError, SourceNotFoundError
from kb.serve.client import connect
from kb.serve.mcp import build_mcp, mcp_asgi_app
from kb.serve.mcp_owner import OwnedIndex
from kb.serve.tools import MAX_LINES, Tools
from kb.testing import FakeEmbedder, copy_workspace, free_port, verify_citation, wait_for, watcher_thread

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PRD = "projects/prds/notifications.md"
QUESTION = "How should we paginate the notifications API?"


@pytest.fixture
def fake_kb(tmp_path: Path) -> Iterator[KnowledgeBase]:
    ws = copy_workspace(ROOT / "data", tmp_path / "ws")
    (ws / ".env").write_text("API_KEY=hunter2\n")
    (ws / "projects/prds/long.md").write_text(
        "# Long\n\n" + "".join(f"Line {i} of many.\n" for i in range(3, 1001))
    )
    (ws / "projects/prds/page.html").write_text(
        "<html><body><h1>Export page</h1><p>The usage export runs nightly at 02:00 UTC.</p></body></html>"
    )
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kb.index()
        yield kb


@pytest.fixture
def tools(fake_kb: KnowledgeBase) -> Tools:
    return Tools(fake_kb, fake_kb.workspace)


# --- the tool layer -----------------------------------------------------------------------------------------
def test_search_has_the_cli_shape_and_filters(tools: Tools) -> None:
    out = tools.search("notification retention", k=3)
    assert out["query"] == "notification retention" and 1 <= len(out["hits"]) <= 3
    assert {"rank", "score", "path", "start_line", "end_line", "heading", "text", "source_type"} <= set(
        out["hits"][0]
    )
    prds = tools.search("export", k=10, type=["prd"], mode="bm25")["hits"]
    assert prds and {h["source_type"] for h in prds} == {"prd"}
    only = tools.search("export", k=10, path="projects/prds/usage*")["hits"]
    assert only and {h["path"] for h in only} == {"projects/prds/usage-export.md"}
    for h in out["hits"]:  # a hit's lines are what read_source returns for them
        src = tools.read_source(h["path"], h["start_line"], h["end_line"])
        assert src["text"].strip() == h["text"].strip()


@pytest.mark.parametrize(
    "args",
    [
        {"query": ""},
        {"query": "x" * 2001},
        {"query": 42},
        {"query": "q", "k": 0},
        {"query": "q", "k": 101},
        {"query": "q", "k": "5"},
        {"query": "q", "k": True},
        {"query": "q", "mode": "fuzzy"},
        {"query": "q", "type": ["prd", "secrets"]},
        {"query": "q", "type": {"prd": 1}},
        {"query": "q", "path": ["*"] * 21},
        {"query": "q", "path": ["a\x00b"]},
    ],
)
def test_search_rejects_bad_arguments(tools: Tools, args: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        tools.search(**args)


def test_ask_returns_the_answer_json_and_its_citations_check_out(
    tools: Tools, fake_kb: KnowledgeBase
) -> None:
    out = tools.ask(QUESTION, persona="backend-engineer")
    assert not out["abstained"] and out["citations"] and out["sentences"]
    assert set(out) >= {"question", "persona", "answer", "abstained", "sentences", "citations", "nearest"}
    for c in out["citations"]:
        src = tools.read_source(c["path"], c["start_line"], c["end_line"])
        assert " ".join(c["quote"].split()) in " ".join(src["text"].split())
        assert verify_citation(fake_kb.workspace.root, c["path"], c["start_line"], c["end_line"], c["quote"])
    for bad in ({"k": 0}, {"k": 51}, {"persona": 3}, {"llm": "llama-cpp:/etc/passwd"}, {"llm": "x\x01"}):
        with pytest.raises(BadRequest):
            tools.ask(QUESTION, **bad)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("../outside.md", AccessDeniedError),
        ("projects/prds/../../../etc/passwd", AccessDeniedError),
        ("/etc/passwd", AccessDeniedError),
        ("~/.ssh/id_rsa", AccessDeniedError),
        (".env", AccessDeniedError),
        ("projects/prds/id_rsa", AccessDeniedError),
        (".workos/.kb/manifest.sqlite3", AccessDeniedError),
        (".git/config", AccessDeniedError),
        ("projects\\prds\\notifications.md", AccessDeniedError),
        ("projects/prds/notifications.md\x00.txt", AccessDeniedError),
        ("README.md", SourceNotFoundError),
        ("projects/prds/absent.md", SourceNotFoundError),
        ("", BadRequest),
        (7, BadRequest),
    ],
)
def test_read_source_refuses_what_is_not_an_indexed_source(tools: Tools, path: Any, error: type) -> None:
    with pytest.raises(error):
        tools.read_source(path)


def test_read_source_refuses_a_source_swapped_for_a_symlink_out(tools: Tools, tmp_path: Path) -> None:
    secret = tmp_path / "outside.md"
    secret.write_text("# Outside\n\nnot yours\n")
    target = tools.workspace.root / PRD
    target.unlink()
    target.symlink_to(secret)  # still listed as indexed: nobody re-indexed since
    with pytest.raises(AccessDeniedError, match="outside the workspace"):
        tools.read_source(PRD)
    target.unlink()
    target.symlink_to(tools.workspace.root / ".env")
    with pytest.raises(AccessDeniedError):
        tools.read_source(PRD)


def test_read_source_pages_long_files_and_checks_its_range(tools: Tools) -> None:
    first = tools.read_source("projects/prds/long.md")
    assert first["start_line"] == 1 and first["end_line"] == MAX_LINES and first["truncated"]
    assert first["total_lines"] == 1001 and first["text"].splitlines()[2] == "Line 3 of many."
    nxt = tools.read_source("projects/prds/long.md", first["end_line"] + 1)
    assert nxt["text"].splitlines()[0] == f"Line {MAX_LINES + 1} of many."
    one = tools.read_source("projects/prds/long.md", 10, 10)
    assert one == {
        "path": "projects/prds/long.md",
        "start_line": 10,
        "end_line": 10,
        "total_lines": 1001,
        "truncated": False,
        "text": "Line 10 of many.",
    }
    assert tools.read_source("./projects//prds/long.md", 5, 5)["path"] == "projects/prds/long.md"
    with pytest.raises(BadRequest, match="past the end"):
        tools.read_source("projects/prds/long.md", 5000)
    with pytest.raises(BadRequest, match="before"):
        tools.read_source("projects/prds/long.md", 9, 8)
    html = tools.read_source("projects/prds/page.html")  # the text kb extracted, as citations number it
    assert "nightly at 02:00 UTC" in html["text"] and "<p>" not in html["text"]


def test_status_and_personas(tools: Tools) -> None:
    st = tools.status()
    assert st["sources_count"] == 9 and st["last_indexed_at"] and "watcher" in st
    personas = {p["name"]: p for p in tools.personas()["personas"]}
    assert {"backend-engineer", "senior-pm"} <= set(personas)
    be = personas["backend-engineer"]
    assert be["title"] == "Backend Engineer" and be["when_to_consult"] and "path" not in be


# --- the MCP server -----------------------------------------------------------------------------------------
def test_mcp_tools_prompts_and_resources_in_memory(fake_kb: KnowledgeBase) -> None:
    server = build_mcp(lambda: fake_kb, fake_kb.workspace)

    async def session() -> None:
        async with Client(server) as c:
            listed = {t.name: t for t in (await c.list_tools()).tools}
            assert set(listed) == {"search", "ask", "read_source", "status", "personas"}
            k = listed["search"].input_schema["properties"]["k"]
            assert (k["minimum"], k["maximum"], k["default"]) == (1, 100, 10) and k["description"]
            assert all(t.description and t.annotations.read_only_hint for t in listed.values())
            hits = (await c.call_tool("search", {"query": "usage export", "k": 2})).structured_content
            assert hits and len(hits["hits"]) == 2
            bad = await c.call_tool("search", {"query": "usage export", "k": 0})
            assert bad.is_error
            refused = await c.call_tool("read_source", {"path": "../../etc/passwd"})
            assert refused.is_error and "leaves the workspace" in refused.content[0].text
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            assert {"backend-engineer", "senior-pm"} <= prompts
            prompt = await c.get_prompt("backend-engineer", {"question": "Which database?"})
            text = prompt.messages[0].content.text
            persona = (ROOT / "personas/backend-engineer.md").read_text(encoding="utf-8")
            assert persona.strip() in text
            assert "Which database?" in text
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert f"kb://{PRD}" in uris and len(uris) == 9
            read = await c.read_resource(f"kb://{PRD}")
            assert read.contents[0].text == (fake_kb.workspace.root / PRD).read_text()
            for uri in ("kb://../outside.md", "kb://.env", "kb:///etc/passwd", "kb://README.md"):
                with pytest.raises(Exception):  # noqa: B017 - the SDK's protocol error, any flavour
                    await c.read_resource(uri)

    anyio.run(session)


def test_mcp_over_streamable_http_mounted_in_a_starlette_app(fake_kb: KnowledgeBase) -> None:
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    app, lifespan = mcp_asgi_app(build_mcp(lambda: fake_kb, fake_kb.workspace))

    @contextlib.asynccontextmanager
    async def host_lifespan(_: Starlette) -> AsyncIterator[None]:
        async with lifespan():
            yield

    host = Starlette(routes=[Route("/mcp", endpoint=app)], lifespan=host_lifespan)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(host, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30)
    try:

        async def session() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp") as c:
                assert {t.name for t in (await c.list_tools()).tools} >= {"search", "read_source"}
                out = await c.call_tool("read_source", {"path": PRD, "start_line": 1, "end_line": 2})
                assert out.structured_content and out.structured_content["end_line"] == 2

        anyio.run(session)
        rebinding = httpx.post(
            f"http://127.0.0.1:{port}/mcp", headers={"Host": "evil.example"}, json={}, timeout=10
        )
        assert rebinding.status_code in (403, 421)
    finally:
        server.should_exit = True
        thread.join(30)


def fake_index(ws: Path) -> Any:
    """``OpenIndex`` for :class:`OwnedIndex`: the workspace's engine and query with the FakeEmbedder."""

    def open_index() -> Any:
        kb = KnowledgeBase.open(ws, embedder=FakeEmbedder())
        return kb.engine, kb.query

    return open_index


def test_owned_index_follows_the_owner_and_takes_over_when_it_stops(tmp_path: Path) -> None:
    ws = copy_workspace(ROOT / "data", tmp_path / "ws")
    with watcher_thread(ws) as (w, _, _):
        owned = OwnedIndex(w.engine.workspace, fake_index(ws), reconcile_every=3600.0)
        owned.start()
        assert owned.search("usage export", 3) and not owned.watching  # a client of the running owner
    try:  # the owner stopped: the next request starts a watcher here, fresh and serving its socket
        (ws / "projects/prds/new.md").write_text("# New\n\nThe zanzibar rollout is next week.\n")
        hits = owned.search("zanzibar rollout", 3, mode="bm25")
        assert hits and hits[0].path == "projects/prds/new.md"
        watcher = owned.status().watcher
        assert owned.watching and watcher and watcher.running and watcher.pid == os.getpid()
    finally:
        owned.stop()
    assert not owned.watching and connect(ws) is None


def test_owned_index_says_why_it_cannot_watch(tmp_path: Path) -> None:
    ws = copy_workspace(ROOT / "data", tmp_path / "ws")
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as writer:
        owned = OwnedIndex(writer.workspace, fake_index(ws))
        with writer.engine.write_lock():  # another writer (a long kb index) holds the index
            with pytest.raises(
                KbError, match=r"could not watch .*Another kb process .* is writing the index"
            ):
                owned.search("usage export", 3)
        assert not owned.watching
        owned.stop()


# --- kb mcp, a real process ---------------------------------------------------------------------------------
def rpc(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def test_kb_mcp_speaks_only_protocol_on_stdout_and_exits_when_stdin_closes(tmp_path: Path) -> None:
    ws = copy_workspace(ROOT / "data", tmp_path / "ws")
    calls = [
        {"name": "search", "arguments": {"query": "usage export", "k": 2}},
        {"name": "read_source", "arguments": {"path": "../../etc/passwd"}},
        {"name": "status", "arguments": {}},
    ]
    requests = [
        INIT,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        *({"jsonrpc": "2.0", "id": 3 + i, "method": "tools/call", "params": p} for i, p in enumerate(calls)),
    ]
    log = tmp_path / "stderr.log"
    with watcher_thread(ws), log.open("wb") as errors:  # kb mcp is this owner's client: nothing heavy
        child = subprocess.Popen(
            [sys.executable, "-m", "kb", "mcp", "--workspace", str(ws)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert child.stdin and child.stdout
        replies = []
        for request in requests:
            child.stdin.write(rpc(request))
            child.stdin.flush()
            if "id" in request:  # every line kb mcp writes to stdout is a JSON-RPC message
                replies.append(json.loads(child.stdout.readline()))
        child.stdin.close()  # the client went away: kb mcp exits, cleanly
        code = child.wait(timeout=60)
        rest = child.stdout.read()
    assert code == 0, log.read_text()[-2000:]
    assert rest == b"" and all(r.get("jsonrpc") == "2.0" for r in replies)
    by_id = {r["id"]: r for r in replies}
    assert set(by_id) == {1, 2, 3, 4, 5}
    assert by_id[1]["result"]["serverInfo"]["name"] == "kb"
    assert len(by_id[3]["result"]["structuredContent"]["hits"]) == 2
    assert (
        by_id[4]["result"]["isError"] and "leaves the workspace" in by_id[4]["result"]["content"][0]["text"]
    )
    assert by_id[5]["result"]["structuredContent"]["watcher"]["pid"] == os.getpid()  # the owner answered


def start_kb_mcp(ws: Path, log: Path) -> subprocess.Popen[bytes]:
    """``kb mcp`` on ``ws``, initialised (raw JSON-RPC on its pipes), its stderr in ``log``."""
    with log.open("wb") as errors:
        child = subprocess.Popen(
            [sys.executable, "-m", "kb", "mcp", "--workspace", str(ws)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert child.stdin and child.stdout
    child.stdin.write(rpc(INIT))
    child.stdin.flush()
    assert json.loads(child.stdout.readline())["result"]["serverInfo"]["name"] == "kb"
    return child


def test_kb_mcp_stops_at_once_on_sigterm_with_stdin_still_open(tmp_path: Path) -> None:
    ws = copy_workspace(ROOT / "data", tmp_path / "ws")
    log = tmp_path / "stderr.log"
    with watcher_thread(ws):
        child = start_kb_mcp(ws, log)
        child.send_signal(signal.SIGTERM)  # its stdin reader is blocked in read(): it must not wait for EOF
        code = child.wait(timeout=30)
        child.communicate()
    assert code == 128 + signal.SIGTERM and "kb mcp stopped (SIGTERM)" in log.read_text()


def start_kb_mcp_watching(ws: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``kb mcp`` on ``ws`` that nobody else owns, once its watcher is ready; and the watcher's pid (the
    process serving the workspace's socket, which other kb commands reach)."""
    child = start_kb_mcp(ws, log)
    wait_for(lambda: "ready: watching" in log.read_text(), 180)
    remote = connect(ws)
    assert remote is not None, log.read_text()[-2000:]
    remote.close()
    return child, remote.pid


def parent_of(pid: int) -> int:
    return int(proc_stat(pid)[1])


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: state, parent, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def gone(pid: int) -> bool:
    """The process exited, all its threads (its files are closed): a zombie not yet reaped counts, but not a
    thread-group leader that is a zombie while its other threads still exit."""
    try:
        return proc_stat(pid)[0] == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def call(child: subprocess.Popen[bytes], n: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One ``tools/call`` on a started ``kb mcp`` (raw JSON-RPC); its result."""
    assert child.stdin and child.stdout
    request = {
        "jsonrpc": "2.0",
        "id": n,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    child.stdin.write(rpc(request))
    child.stdin.flush()
    reply = json.loads(child.stdout.readline())
    assert reply["id"] == n
    return dict(reply["result"])


@pytest.mark.slow
def test_kb_mcp_runs_its_own_watcher_and_stops_it(indexed: Path, tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    child, watcher = start_kb_mcp_watching(indexed, log)
    assert parent_of(watcher) == child.pid  # kb mcp watches the index itself, in a forked child
    assert call(child, 2, "search", {"query": "usage export", "k": 2})["structuredContent"]["hits"]
    child.send_signal(signal.SIGTERM)
    code = child.wait(timeout=150)
    child.communicate()
    assert code == 128 + signal.SIGTERM, log.read_text()[-2000:]
    assert connect(indexed) is None and gone(watcher)
    watch = json.loads((indexed / ".workos/.kb/watch.json").read_text())
    assert watch["running"] is False and watch["pid"] == watcher  # the watcher stopped cleanly first


@pytest.mark.slow
def test_kb_mcp_killed_outright_takes_its_watcher_with_it(indexed: Path, tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    child, watcher = start_kb_mcp_watching(indexed, log)
    child.kill()  # no handler runs: the watcher learns it from the pipe only kb mcp held
    child.wait(timeout=30)
    child.communicate()
    wait_for(lambda: gone(watcher), 60)
    assert connect(indexed) is None
    watch = json.loads((indexed / ".workos/.kb/watch.json").read_text())
    assert watch["running"] is False and watch["pid"] == watcher, log.read_text()[-2000:]


@pytest.mark.slow
def test_kb_mcp_whose_watcher_died_watches_in_its_own_process(indexed: Path, tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    child, watcher = start_kb_mcp_watching(indexed, log)
    os.kill(watcher, signal.SIGKILL)  # the forked watcher dies; its socket file stays behind
    wait_for(lambda: gone(watcher), 60)
    (indexed / "projects/prds/new.md").write_text("# New\n\nThe zanzibar rollout is next week.\n")
    try:
        result = call(child, 2, "search", {"query": "zanzibar rollout", "k": 3})
        assert "structuredContent" in result, (result, log.read_text()[-2000:])
        hits = result["structuredContent"]["hits"]
        assert hits and hits[0]["path"] == "projects/prds/new.md", log.read_text()[-2000:]
        status = call(child, 3, "status", {})["structuredContent"]
        assert status["watcher"]["running"] and status["watcher"]["pid"] == child.pid  # now in kb mcp itself
    finally:
        assert child.stdin and child.stdout
        child.stdin.close()  # the agent went away: kb mcp stops the watcher it runs now, and exits
        assert child.wait(timeout=150) == 0, log.read_text()[-2000:]
        child.stdout.close()


def readme_server() -> dict[str, Any]:
    """The ``kb`` server of the README's MCP configuration snippets (JSON and Codex's TOML say the same)."""
    import tomllib

    section = README.split("\n## Agents (MCP)\n", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S)]
    assert blocks, "README's Agents section has a JSON configuration snippet"
    servers = [b["mcpServers"]["kb"] for b in blocks]
    servers += [
        tomllib.loads(b)["mcp_servers"]["kb"] for b in re.findall(r"```toml\n(.*?)```", section, re.S)
    ]
    assert len(servers) >= 2 and all(s == servers[0] for s in servers)
    claude = re.search(r"claude mcp add .*? -- (.+)", section)
    assert claude and claude.group(1).split() == [servers[0]["command"], *servers[0]["args"]]
    assert ".cursor/mcp.json" in section and "`kb mcp`" in README.split("\n## Commands\n", 1)[1]
    return servers[0]


@pytest.mark.slow
def test_readme_snippet_launches_kb_mcp_for_a_real_agent_session(indexed: Path) -> None:
    server = readme_server()
    placeholder = "/path/to/your/workspace"
    assert placeholder in server["args"]
    args = [str(indexed) if a == placeholder else a for a in server["args"]]
    bindir = str(Path(sys.executable).parent)  # where the kb console script is installed
    if shutil.which(server["command"], path=bindir + os.pathsep + os.environ["PATH"]) is None:
        pytest.skip("the kb console script is not installed (pip install -e .)")
    env = {
        "PATH": bindir + os.pathsep + os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "KB_MODEL_CACHE_DIR": os.environ["KB_MODEL_CACHE_DIR"],
        "HOME": os.environ["HOME"],
    }
    params = StdioServerParameters(command=server["command"], args=args, env=env)
    new_word = f"quokkafication{os.getpid()}"

    async def session() -> None:
        async with Client(params) as c:
            assert {t.name for t in (await c.list_tools()).tools} == {
                "search",
                "ask",
                "read_source",
                "status",
                "personas",
            }
            hits = (
                await c.call_tool("search", {"query": "notification retention", "k": 3})
            ).structured_content
            assert hits and hits["hits"]
            answer = (await c.call_tool("ask", {"question": QUESTION})).structured_content
            assert answer and not answer["abstained"] and answer["citations"]
            for cit in answer["citations"][:3]:
                args = {"path": cit["path"], "start_line": cit["start_line"], "end_line": cit["end_line"]}
                src = (await c.call_tool("read_source", args)).structured_content
                assert src and " ".join(cit["quote"].split()) in " ".join(src["text"].split())
                assert verify_citation(indexed, cit["path"], cit["start_line"], cit["end_line"], cit["quote"])
            for path in ("../../../etc/passwd", "/etc/passwd", ".workos/.kb/manifest.sqlite3", ".env"):
                refused = await c.call_tool("read_source", {"path": path})
                assert refused.is_error and "root:" not in refused.content[0].text
            status = (await c.call_tool("status", {})).structured_content
            assert status and status["watcher"]["running"] and status["watcher"]["pid"] != os.getpid()
            with (indexed / PRD).open("a") as fh:  # kb mcp watches the workspace itself: the edit is found
                fh.write(f"\n\nThe {new_word} of alerts starts in June.\n")
            deadline = time.monotonic() + 60
            while True:
                out = await c.call_tool("search", {"query": new_word, "k": 1, "mode": "bm25"})
                found = out.structured_content and out.structured_content["hits"]
                if found and new_word in found[0]["text"]:
                    break
                assert time.monotonic() < deadline, "the edit was not indexed within 60 s"
                await anyio.sleep(0.2)

    anyio.run(session)
    wait_for(lambda: connect(indexed) is None, 30)  # kb mcp stopped its watcher when the session ended
