"""The watcher's local server and its client: security, validation, faithful results, a thin client.

A real :class:`kb.serve.watcher.Watcher` serves on a real Unix socket (fake embedder; real Chroma); its
clients are this process (kb.serve.client), raw sockets, and real ``kb`` subprocesses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kb import KnowledgeBase
from kb.errors import EmptyIndexError, KbError
from kb.models import Answer, Hit, IndexReport, Status
from kb.serve.client import MAX_REQUEST, connect, socket_path
from kb.serve.server import is_socket_private, raw_request
from kb.testing import small_workspace, watcher_thread


def reply(path: Path, payload: bytes) -> dict:
    return json.loads(raw_request(path, payload))


def test_socket_is_private_and_requests_are_validated(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with watcher_thread(ws) as (w, _, _):
        sock = socket_path(ws / ".workos/.kb")
        assert is_socket_private(sock)
        assert stat.S_IMODE(os.stat(ws / ".workos/.kb").st_mode) == 0o700
        ok = reply(sock, b'{"v": 1, "method": "ping"}\n')
        assert ok == {"ok": True, "result": {"pid": os.getpid(), "workspace": str(ws)}}
        cases = {
            b"not json\n": "not valid JSON",
            b"[1, 2]\n": "JSON object",
            b'{"method": "drop_everything"}\n': "Unknown method",
            b'{"method": "search", "params": [1]}\n': "params",
            b'{"method": "search", "params": {"query": "x", "rm -rf": 1}}\n': "params",
            b'{"method": "search", "params": {"query": "x", "nope": 1}}\n': "Bad parameters for search",
            b'{"v": 99, "method": "ping"}\n': "protocol version",
            b'{"method": "search", "params": {"query": "   "}}\n': "question is empty",
        }
        for payload, message in cases.items():
            r = reply(sock, payload)
            assert r["ok"] is False and message in r["error"]["message"], (payload, r)
        big = b'{"method": "search", "params": {"query": "' + b"a" * MAX_REQUEST + b'"}}\n'
        r = reply(sock, big)
        assert r["ok"] is False and "larger than" in r["error"]["message"]
        # Still serving after all that.
        assert reply(sock, b'{"method": "ping"}\n')["ok"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_other_users_are_refused_by_peer_credentials(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with watcher_thread(ws):
        sock = socket_path(ws / ".workos/.kb")
        # Open the file permissions on purpose (restored after): only the SO_PEERCRED check stands in the way.
        opened = [p for p in sock.parents if p != Path("/")]
        modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in opened}
        for p in opened:
            os.chmod(p, modes[p] | 0o011)
        os.chmod(sock, 0o666)
        code = (
            "import os, socket, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
            "try:\n"
            '    s.sendall(b\'{"method": "status"}\\n\')\n'
            "except BrokenPipeError:\n"  # the server may refuse before reading: its reply is still there
            "    pass\n"
            "print(s.makefile().readline())\n"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", code, str(sock)], capture_output=True, text=True, timeout=60
            )
        finally:
            for p, mode in modes.items():
                os.chmod(p, mode)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["ok"] is False and "Permission denied" in answer["error"]["message"]
        assert "sources" not in out.stdout


def test_remote_results_equal_local_results_and_errors_keep_their_class(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with watcher_thread(ws) as (w, _, _):
        reader = w.reader
        assert reader is not None
        remote = connect(ws)
        assert remote is not None and remote.pid == os.getpid()
        with remote:
            hits = remote.search("alpha beta", k=3)
            assert hits and all(isinstance(h, Hit) for h in hits)
            assert hits == reader.search("alpha beta", k=3)
            answer = remote.ask("Who owns billing?")
            assert isinstance(answer, Answer)
            local = reader.ask("Who owns billing?")
            assert dataclasses.asdict(answer) == dataclasses.asdict(local)
            st = remote.status()
            assert isinstance(st, Status) and st.sources_count == 5 and st.watcher and st.watcher.running
            report = remote.index()
            assert isinstance(report, IndexReport) and report.chunks_embedded == 0 and report.unchanged == 5
            with pytest.raises(KbError, match="question is empty"):
                remote.search("   ")


def test_python_api_routes_to_the_live_watcher(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    with watcher_thread(ws) as (w, _, _):
        before = w.served
        other = KnowledgeBase.open(ws)  # another "process" would do exactly this
        hits = other.search("alpha beta", k=2)
        assert hits and w.served == before + 1
        assert other.status().watcher.running  # type: ignore[union-attr]
        assert not other.engine.opened  # never opened the manifest or Chroma itself


def test_no_watcher_means_local_and_a_dead_socket_is_ignored(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    assert connect(ws) is None
    # A socket file left by a killed watcher: nobody listens, kb works locally.
    state = ws / ".workos/.kb"
    state.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(socket_path(state)))
    dead.close()
    assert connect(ws) is None
    with pytest.raises(EmptyIndexError):
        KnowledgeBase.open(ws).search("alpha")


@pytest.mark.slow
def test_cli_client_path_is_thin_while_a_watcher_serves(tmp_path: Path) -> None:
    """`kb search`/`ask`/`status` answered by the watcher import no chromadb, onnxruntime, torch, model."""
    ws = small_workspace(tmp_path)
    heavy = [
        "chromadb",
        "onnxruntime",
        "torch",
        "sentence_transformers",
        "tokenizers",
        "kb.backends.store",
        "kb.backends.embedders",
    ]
    probe = (
        "import sys, json\n"
        "from kb.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        f"sys.stderr.write('\\nMODULES ' + json.dumps([m for m in {heavy!r} if m in sys.modules]) + ' CODE '"
        " + str(code) + ' NUMPY ' + str('numpy' in sys.modules))\n"
    )
    with watcher_thread(ws) as (w, _, _):
        for args in (
            ["search", "alpha beta", "--json"],
            ["status", "--json"],
            ["ask", "Who owns billing?", "--json"],
        ):
            r = subprocess.run(
                [sys.executable, "-c", probe, *args, "--workspace", str(ws)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            tail = r.stderr.rsplit("MODULES ", 1)[1]
            assert tail.startswith("[]"), (args, tail)
            if args[0] != "ask":  # (kb ask's rendering imports kb.answer.grounding, which imports numpy)
                assert "NUMPY False" in r.stderr, args
            assert any(f"CODE {c} " in tail for c in ("0", "3", "None")), r.stderr
            json.loads(r.stdout)
        assert w.served >= 3


def test_a_long_workspace_path_gets_a_private_socket_elsewhere(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    ws = small_workspace(deep)
    sock = socket_path(ws / ".workos/.kb")
    assert len(str(ws / ".workos/.kb/watch.sock")) > 100 and sock.parent == Path(f"/tmp/kb-{os.getuid()}")
    with watcher_thread(ws):
        assert is_socket_private(sock)
        remote = connect(ws)
        assert remote is not None
        with remote:
            assert remote.status().sources_count == 5
    assert not sock.exists()
