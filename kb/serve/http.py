"""``kb serve``: one process that owns and watches the index and serves it over HTTP.

* a :class:`kb.serve.watcher.Watcher` on a thread keeps the index equal to the files and keeps answering
  ``kb search``/``ask``/``status``/``index`` from other terminals on its Unix socket, as ``kb watch`` does;
* uvicorn (h11) serves, on the main thread: the JSON API under ``/v1/`` (:mod:`kb.serve.http_api`), MCP's
  Streamable HTTP transport at ``/mcp`` (:mod:`kb.serve.mcp`) and the web page at ``/`` (``kb/serve/web/``);
* a :class:`kb.serve.refresh.ResourceRefresher` re-checks stale recommended resources in the background.

Security is :mod:`kb.serve.http_security` (Host/Origin checks, token, limits, headers) plus, here, the
connection level: a client must send its request head within :data:`HEAD_TIMEOUT` seconds (a slow-loris or
silent connection is closed, and never holds up anyone else: the server is asynchronous), one address may
hold at most :data:`PER_CLIENT` connections, idle keep-alive connections close after 5 s. Binding anything
but a loopback address requires a token (:func:`check_bind`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from kb.answer.query import Query
from kb.errors import ConfigError
from kb.index.engine import IndexEngine
from kb.models import ResourceInfo
from kb.serve.http_api import Api
from kb.serve.http_owner import OwnerService
from kb.serve.http_security import ASGIApp, Policy, SecurityMiddleware, is_loopback
from kb.serve.refresh import ResourceRefresher
from kb.serve.watcher import Watcher
from kb.service import Service

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
HEAD_TIMEOUT = 10.0  # seconds to send a request's head
PER_CLIENT = 64  # open connections per client address
MAX_CONNECTIONS = 1000  # beyond this, 503
READY = "kb serve ready:"  # the log line that says the server accepts requests


@dataclass
class ServeOptions:
    """``kb serve``'s flags."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    allow_hosts: Sequence[str] = ()
    rate: float = 20.0
    burst: int = 40
    max_body: int = 64 * 1024
    head_timeout: float = HEAD_TIMEOUT
    per_client: int = PER_CLIENT
    mcp: bool = True  # mount MCP's Streamable HTTP transport at /mcp
    watch: dict[str, Any] = field(default_factory=dict)  # Watcher options (debounce, polling, ...)


def check_bind(host: str, token: str | None) -> None:
    """ConfigError unless ``host`` is an IP address (or localhost) and, when not loopback, a token is set."""
    if host != "localhost":
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            raise ConfigError(
                f"--host {host!r} is not an IP address: give one, e.g. 127.0.0.1 or 0.0.0.0."
            ) from None
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"kb serve on {host} would be reachable from other machines: it needs a token. Set "
            "KB_SERVE_TOKEN or pass --token-file FILE (clients then send it; kb CLI: KB_SERVE_TOKEN)."
        )


def read_token(path: str | Path) -> str:
    """The token in a file (its first line); ConfigError when missing, empty or too short."""
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError):
        raise ConfigError(f"Cannot read a token from {path}: create it with one line of text.") from None
    return check_token(token, f"the token in {path}")


def check_token(token: str, where: str = "KB_SERVE_TOKEN") -> str:
    if len(token) < 16 or any(ord(c) < 33 for c in token):
        raise ConfigError(
            f"{where} is too short or has spaces: use at least 16 printable characters, e.g. the output of: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


# --- the application ----------------------------------------------------------------------------------------
async def _page(request: Request) -> Response:
    name, media = PAGES[request.url.path]
    return FileResponse(WEB / name, media_type=media, headers={"cache-control": "no-cache"})


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: "No such path.", 405: "Method not allowed here."}.get(status, "Request failed.")
    return JSONResponse({"error": {"type": "BadRequest", "message": message, "exit_code": 2}}, status)


def build_app(
    service: Service,
    policy: Policy,
    *,
    resources: Callable[[], list[ResourceInfo]] | None = None,
    mcp: tuple[ASGIApp, Callable[[], contextlib.AbstractAsyncContextManager[Any]]] | None = None,
) -> ASGIApp:
    """The whole HTTP application: page, ``/v1/`` API and (given ``(app, lifespan)``) MCP at ``/mcp``,
    behind :class:`SecurityMiddleware`."""
    routes: list[BaseRoute] = [Route(path, _page, methods=["GET"]) for path in PAGES]
    routes += Api(service, resources=resources).routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if mcp is None:
            yield
            return
        async with mcp[1]():
            yield

    if mcp is not None:
        routes.append(Mount("/mcp", app=mcp[0]))
    handlers: dict[Any, Any] = {404: _not_found, 405: _not_found}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    return SecurityMiddleware(app, policy)


# --- the server ---------------------------------------------------------------------------------------------
def guarded_protocol(head_timeout: float, per_client: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol, plus: the request head must arrive within ``head_timeout`` seconds of the
    connection (or of the first byte after a response), and one address holds at most ``per_client``
    connections."""
    open_by: Counter[str] = Counter()

    class Guarded(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _armed_for: object = None
        _peer = "?"

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else "?"
            open_by[self._peer] += 1
            if open_by[self._peer] > per_client:
                log.warning("refused a connection from %s: %d already open", self._peer, per_client)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._timer is None:
                self._armed_for = self.cycle
                self._timer = self.loop.call_later(head_timeout, self._expire)

        def _expire(self) -> None:
            self._timer = None
            if self.cycle is self._armed_for and not self.transport.is_closing():  # no new request began
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:  # the first bytes of a new request
                self._arm()  # (armed for the cycle before it: the new one starting disarms it)
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            open_by[self._peer] -= 1
            if open_by[self._peer] <= 0:
                del open_by[self._peer]
            super().connection_lost(exc)

    return Guarded


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port); ConfigError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"Cannot listen on {host}:{port}: {exc.strerror}. Choose another --port (or stop what uses it)."
        ) from None
    sock.listen(256)
    sock.setblocking(False)
    return sock


class OneLine(logging.Filter):
    """uvicorn's errors as one line each (e.g. a request cut short by Ctrl-C): no traceback in kb's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}: {exc}", None
            record.exc_info, record.exc_text = None, None
        return True


class HttpServer:
    """uvicorn serving ``app`` on ``sock``: :meth:`run` blocks (on the main thread: until SIGINT/SIGTERM);
    :meth:`start`/:meth:`stop` run it on a thread (tests)."""

    def __init__(self, app: ASGIApp, sock: socket.socket, options: ServeOptions):
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        config = uvicorn.Config(
            app,
            http=guarded_protocol(options.head_timeout, options.per_client),
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            limit_concurrency=MAX_CONNECTIONS,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, OneLine) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(OneLine())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve until stopped. On the main thread uvicorn turns SIGINT/SIGTERM into a graceful stop, then
        re-raises the signal to the handler found before: a no-op one here, so the caller cleans up."""
        main = threading.current_thread() is threading.main_thread()
        before = (
            {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
            if main
            else {}
        )
        try:
            self.server.run(sockets=[self.sock])
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self.run, name="kb-http", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        while not self.server.started and self._thread.is_alive():
            deadline.wait(0.02)
        if not self.server.started:
            raise RuntimeError("the HTTP server did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self.sock.close()


# --- kb serve -----------------------------------------------------------------------------------------------
def serve(
    engine: IndexEngine,
    query: Query,
    options: ServeOptions,
    *,
    resources: Callable[[], list[ResourceInfo]] | None = None,
    refresher: ResourceRefresher | None = None,
) -> None:
    """Watch the index and serve it over HTTP until SIGINT/SIGTERM (see the module docstring)."""
    check_bind(options.host, options.token)
    sock = bind(options.host, options.port)
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _interrupt) if main else None  # SIGTERM while starting: clean up
    stop, failure = threading.Event(), []
    thread: threading.Thread | None = None
    try:
        watcher = Watcher(engine, query, **options.watch)

        def watch() -> None:
            try:
                watcher.run(stop)
            except BaseException as exc:  # reported on the main thread
                failure.append(exc)

        thread = threading.Thread(target=watch, name="kb-watcher", daemon=True)
        thread.start()
        while not watcher.ready.wait(0.1):
            if failure:
                raise failure[0]
        service = OwnerService(watcher)
        policy = Policy(
            port=sock.getsockname()[1],
            token=options.token,
            allow_hosts=frozenset(h.lower() for h in options.allow_hosts),
            rate=options.rate,
            burst=options.burst,
            max_body=options.max_body,
        )
        mounted = mcp_endpoint(service, options, policy.port) if options.mcp else None
        app = build_app(service, policy, resources=resources, mcp=mounted)
        server = HttpServer(app, sock, options)
        threading.Thread(target=_stop_with, args=(thread, server), daemon=True).start()
        if refresher is not None:
            refresher.start()
        auth = "; requests need the token" if options.token else ""
        log.info("%s %s/ (API %s/v1/, MCP %s/mcp)%s", READY, server.url, server.url, server.url, auth)
        server.run()
    finally:
        if refresher is not None:
            refresher.stop()
        stop.set()
        if thread is not None:
            thread.join(120)
        sock.close()
        engine.close()
        if before is not None:
            signal.signal(signal.SIGTERM, before)
    if failure:
        raise failure[0]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def mcp_endpoint(
    service: Service, options: ServeOptions, port: int
) -> tuple[ASGIApp, Callable[[], contextlib.AbstractAsyncContextManager[Any]]]:
    """``kb mcp``'s server (:mod:`kb.serve.mcp`) over ``service`` as ``(app, lifespan)`` for ``/mcp``. The SDK
    checks Host and Origin again (after :class:`SecurityMiddleware`): it is told the names this server answers
    to."""
    from kb.serve.mcp import build_mcp, mcp_asgi_app  # the MCP SDK: only when MCP is served

    names = ["127.0.0.1", "localhost", "[::1]", *(h.lower() for h in options.allow_hosts)]
    if not is_loopback(options.host):
        names += [f"[{a}]" if ":" in a else a for a in local_addresses(options.host)]
    hosts = [f"{n}:{port}" for n in names] + [n for n in options.allow_hosts]
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    server = build_mcp(lambda: service, service.workspace)
    return mcp_asgi_app(server, allowed_hosts=hosts, allowed_origins=origins)


def local_addresses(host: str) -> list[str]:
    """The addresses a bind on ``host`` is reached at (``0.0.0.0``/``::``: this machine's known addresses)."""
    if host not in ("0.0.0.0", "::"):
        return [host]
    found = {"127.0.0.1"}
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    return sorted(found)


def _stop_with(watcher_thread: threading.Thread, server: HttpServer) -> None:
    """Stop serving when the watcher stops by itself (e.g. the workspace folder was deleted)."""
    watcher_thread.join()
    server.server.should_exit = True
