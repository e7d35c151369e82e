"""Real services on loopback for kb's tests and benchmarks: a Chroma server, an OpenAI-compatible embeddings
server, and kb child processes that index with the fake embedder.

* :class:`ChromaServer`: ``chroma run`` (the server in the ``chromadb`` wheel) on a free 127.0.0.1 port, with
  the faults a team's server has: stopped, killed, restarted on the same folder and port, paused (SIGSTOP: a
  server that accepts connections and never answers);
* :class:`EmbeddingServer`: ``POST /v1/embeddings`` in a thread, serving the bundled model's vectors (or any
  function's), with injectable failures (429/5xx), latency, an API key, and a model swap;
* :func:`fake_kb` / :func:`fake_kb_command`: ``kb index`` (or any verb) in a child process with
  :class:`kb.testing.FakeEmbedder` injected (the CLI cannot take an embedder object).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb.testing.processes import Background, free_port, wait_for

if TYPE_CHECKING:
    import numpy as np

HEARTBEAT = "/api/v2/heartbeat"


# --- a Chroma server ----------------------------------------------------------------------------------------
def chroma_binary() -> Path:
    """The ``chroma`` command installed beside this interpreter (it comes with the chromadb wheel)."""
    return Path(sys.executable).with_name("chroma")


class ChromaServer:
    """``chroma run --path PATH --host 127.0.0.1 --port PORT``; ``with ChromaServer(path, log) as url:``.

    :meth:`stop` sends SIGTERM, :meth:`kill` SIGKILL; :meth:`start` again reuses the folder and the port (a
    restarted server, as kb sees it); :meth:`pause` / :meth:`resume` freeze it (connections are accepted by
    the kernel and never answered: a hung server)."""

    def __init__(self, path: Path, log: Path, port: int | None = None):
        self.path, self.log = Path(path), Path(log)
        self.port = port or free_port()
        self.process: Background | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def healthy(self) -> bool:
        import httpx

        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + HEARTBEAT, timeout=2, trust_env=False).status_code == 200
        return False

    def start(self, timeout: float = 90) -> str:
        """Start it and wait for its heartbeat; RuntimeError with its log when it does not come up."""
        self.path.mkdir(parents=True, exist_ok=True)
        cmd = [str(chroma_binary()), "run", "--path", str(self.path), "--host", "127.0.0.1"]
        process = self.process = Background([*cmd, "--port", str(self.port)], self.log)

        def up() -> bool:
            if process.popen.poll() is not None:
                raise RuntimeError(f"chroma exited ({process.popen.returncode}): {self.log_tail()}")
            return self.healthy()

        try:
            wait_for(up, timeout, every=0.2)
        except AssertionError:
            self.kill()
            raise RuntimeError(f"chroma did not answer within {timeout}s: {self.log_tail()}") from None
        return self.url

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.resume()
            self.process.stop(sig, timeout=30)
            self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> str:
        self.stop()
        return self.start()

    def pause(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.popen.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- an embeddings server -----------------------------------------------------------------------------------
class _EmbeddingsHandler(BaseHTTPRequestHandler):
    server: EmbeddingServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/embeddings":
            return self._reply(404, {"error": {"message": f"no route {self.path}"}})
        with srv.lock:
            srv.requests += 1
            failure = srv.failures.pop(0) if srv.failures else None
        if srv.delay:
            time.sleep(srv.delay)
        if failure is not None:
            return self._reply(failure, {"error": {"message": "try again later"}}, {"Retry-After": "0"})
        if srv.api_key and self.headers.get("Authorization") != f"Bearer {srv.api_key}":
            return self._reply(401, {"error": {"message": "invalid api key"}})
        try:
            req = json.loads(body)
            texts = req["input"] if isinstance(req["input"], list) else [req["input"]]
        except (ValueError, KeyError, TypeError):
            return self._reply(400, {"error": {"message": "bad request"}})
        if req.get("model") != srv.model:
            return self._reply(404, {"error": {"message": f"model {req.get('model')!r} not found"}})
        with srv.lock:
            srv.batches.append(len(texts))
            vectors = srv.embed(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
            for i, v in enumerate(vectors)
        ]
        data.reverse()  # the index field says which is which; kb must not rely on the order
        return self._reply(200, {"object": "list", "model": srv.model, "data": data})

    def _reply(self, code: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        blob = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(blob)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(blob)


class EmbeddingServer(ThreadingHTTPServer):
    """An OpenAI-compatible ``/v1/embeddings`` server on 127.0.0.1, serving ``embed`` (default: the bundled
    all-MiniLM-L6-v2, exported to ONNX in ``model_cache``) as ``model``, in a thread while used in ``with``.

    ``failures``: HTTP statuses the next requests get (e.g. ``[429, 503]``); ``delay``: seconds before each
    answer; ``api_key``: required Bearer token; ``embed`` can be swapped at any time (a server that changes
    its model). :attr:`requests` counts requests, :attr:`batches` the texts per successful one."""

    daemon_threads = True

    def __init__(
        self,
        model: str = "minilm",
        *,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
        model_cache: Path | None = None,
        api_key: str | None = None,
    ):
        super().__init__(("127.0.0.1", 0), _EmbeddingsHandler)
        self.model, self.api_key = model, api_key
        if embed is None:
            embed = bundled_embed(model_cache)
        self.embed = embed
        self.failures: list[int] = []
        self.delay = 0.0
        self.requests = 0
        self.batches: list[int] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> EmbeddingServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def bundled_embed(model_cache: Path | None = None) -> Callable[[Sequence[str]], np.ndarray]:
    """The bundled model's ``embed`` (ONNX runtime, the same vectors ``st:all-MiniLM-L6-v2`` gives)."""
    from kb.backends.embedders import make_embedder
    from kb.settings import DEFAULT_EMBEDDER

    cache = model_cache or Path(os.environ.get("KB_MODEL_CACHE_DIR") or Path.home() / ".cache/kb/models")
    return make_embedder(DEFAULT_EMBEDDER, "onnx", cache).embed


# --- kb with the fake embedder, in a child process ----------------------------------------------------------
FAKE_KB = """
import json, sys
from kb import KnowledgeBase
from kb.testing import FakeEmbedder
verb, ws = sys.argv[1], sys.argv[2]
if verb == "watch":  # its log lines on stderr, as the CLI's (READY among them)
    from kb.cli.watch_render import log_to_stderr
    log_to_stderr()
with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
    result = getattr(kb, verb)(*sys.argv[3:])
if result is not None:
    print(json.dumps(result.to_dict() if hasattr(result, "to_dict") else [h.to_dict() for h in result]))
"""


def fake_kb_command(verb: str, workspace: Path, *args: str) -> list[str]:
    """The command line of :func:`fake_kb` (for a background child, e.g. ``kb watch``)."""
    return [sys.executable, "-c", FAKE_KB, verb, str(workspace), *args]


def fake_kb(
    verb: str, workspace: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``KnowledgeBase.open(workspace, embedder=FakeEmbedder()).VERB(*args)`` in a child process."""
    return subprocess.run(
        fake_kb_command(verb, workspace, *args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
