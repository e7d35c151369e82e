"""Settings precedence, as the README and ``kb config`` state it: flags and API arguments > ``KB_*``
environment variables > the workspace's kb.toml > defaults — one key set at every level at once, and each
level shown to win over the ones below it.

* ``llm`` through the real CLI: ``kb ask --json`` says which backend answered, and a stub OpenAI-compatible
  server on 127.0.0.1 records which model name it was asked for (``openai-compatible:NAME`` names it), so the
  spec that won is visible from outside; ``kb config --json`` shows the effective value for the levels it
  has (it takes no --llm flag).
* ``top_k`` through the Python API: ``KnowledgeBase.open(ws, top_k=...)`` is the API-argument level.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kb import KnowledgeBase
from kb.cli import app


class ModelStub(ThreadingHTTPServer):
    """A minimal OpenAI-compatible chat server: records the ``model`` of every request, streams one reply."""

    def __init__(self) -> None:
        self.models: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                stub.models.append(payload["model"])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                delta = {"choices": [{"index": 0, "delta": {"content": "Roles group permissions. [1]"}}]}
                self.wfile.write(f"data: {json.dumps(delta)}\n\ndata: [DONE]\n\n".encode())

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def stub() -> Iterator[ModelStub]:
    server = ModelStub()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


QUESTION = "How should I model a permissions system with roles and permissions?"


def test_llm_flag_beats_environment_beats_kb_toml_beats_default(
    indexed: Path, stub: ModelStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()

    def ask(*flags: str) -> tuple[str, str | None]:
        """(backend that answered, model name the server was asked for, if any)"""
        before = len(stub.models)
        r = runner.invoke(app, ["ask", QUESTION, *flags, "--json", "--workspace", str(indexed)])
        assert r.exit_code in (0, 3), r.output
        asked = stub.models[before:]
        assert len(asked) <= 1
        return json.loads(r.stdout)["backend"], asked[0] if asked else None

    def effective() -> str:
        r = runner.invoke(app, ["config", "--json", "--workspace", str(indexed)])
        assert r.exit_code == 0, r.output
        return str(json.loads(r.stdout)["settings"]["llm"])

    # default
    assert effective() == "extractive"
    assert ask() == ("extractive", None)
    # kb.toml over the default
    (indexed / "kb.toml").write_text(
        f'llm = "openai-compatible:from-toml"\nllm_base_url = "{stub.url}"\n', encoding="utf-8"
    )
    assert effective() == "openai-compatible:from-toml"
    assert ask() == ("openai-compatible", "from-toml")
    # KB_LLM over kb.toml
    monkeypatch.setenv("KB_LLM", "openai-compatible:from-env")
    assert effective() == "openai-compatible:from-env"
    assert ask() == ("openai-compatible", "from-env")
    # the flag over KB_LLM (and kb.toml)
    assert ask("--llm", "openai-compatible:from-flag") == ("openai-compatible", "from-flag")
    assert ask("--llm", "extractive") == ("extractive", None)
    assert effective() == "openai-compatible:from-env", "a flag changes one command, not the settings"


def test_top_k_api_argument_beats_environment_beats_kb_toml_beats_default(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def top_k(**arguments: Any) -> int:
        with KnowledgeBase.open(workspace, **arguments) as kb:
            return kb.settings.top_k

    assert top_k() == 5
    (workspace / "kb.toml").write_text("top_k = 4\n", encoding="utf-8")
    assert top_k() == 4
    monkeypatch.setenv("KB_TOP_K", "3")
    assert top_k() == 3
    assert top_k(top_k=2) == 2
    assert top_k(top_k=None) == 3, "None means: not given"
