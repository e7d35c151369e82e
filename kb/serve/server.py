"""The local server inside ``kb watch``: other processes' search/ask/status/index go to the index's owner.

Security: a Unix domain socket (never a TCP port) in the workspace's state folder, which is made 0700; the
socket itself is created 0600. Every connection's peer is checked with SO_PEERCRED: only the same user is
served. A request is one JSON line of at most :data:`kb.serve.client.MAX_REQUEST` bytes; its method and
parameters are checked against a schema (:mod:`kb.serve.protocol`). Errors come back as
``{"ok": false, "error": ...}``.

A crowd of clients: the socket listens with a backlog of :data:`BACKLOG` (clients wait there, and retry while
the watcher is alive: :func:`kb.serve.client.connect`); at most :data:`MAX_HANDLERS` connections are served at
once (the accept loop waits for a free slot); each request must arrive whole within :data:`READ_TIMEOUT`
seconds of when the server starts waiting for it — a deadline for the whole line, not for each read, so a
client dripping a byte every few seconds is cut off — and a reply that the client does not read within
:data:`WRITE_TIMEOUT` seconds ends the connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kb.errors import BadRequest, KbError
from kb.serve.client import MAX_REQUEST, peer_credentials
from kb.serve.protocol import METHODS, validate

log = logging.getLogger(__name__)

__all__ = ["METHODS", "WatchServer", "is_socket_private", "raw_request", "validate"]

READ_TIMEOUT = 10.0  # seconds a client may take to send one whole request line
WRITE_TIMEOUT = 30.0  # seconds a client may take to read a reply
BACKLOG = 256  # connections waiting to be accepted
MAX_HANDLERS = 64  # connections served at once

Dispatch = Callable[[str, dict[str, Any]], Any]


class _Deadline(Exception):
    """The request line did not arrive whole in time."""


class _Handler(socketserver.BaseRequestHandler):
    server: _Server
    request: socket.socket

    def setup(self) -> None:
        self._buffer = bytearray()

    def handle(self) -> None:
        try:
            _, uid, _ = peer_credentials(self.request)
        except OSError:
            return
        if uid != os.getuid():
            log.warning("refused a connection from uid %d (kb watch serves only uid %d)", uid, os.getuid())
            self._send(
                {"ok": False, "error": _err(BadRequest("Permission denied: not the owner of this index."))}
            )
            return
        while not self.server.stopping:
            try:
                line = self._read_line(time.monotonic() + self.server.read_timeout)
            except (_Deadline, OSError):
                return
            if not line:
                return
            if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
                self._send(
                    {"ok": False, "error": _err(BadRequest(f"Request larger than {MAX_REQUEST} bytes."))}
                )
                return
            self._send(self.server.answer(line))

    def _read_line(self, deadline: float) -> bytes:
        """One line (with its newline), at most MAX_REQUEST + 1 bytes; b"" at end of stream. The deadline is
        for the whole line."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 or len(self._buffer) > MAX_REQUEST:
                cut = end + 1 if 0 <= end <= MAX_REQUEST else MAX_REQUEST + 1
                line = bytes(self._buffer[:cut])
                del self._buffer[:cut]
                return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Deadline
            self.request.settimeout(left)
            try:
                data = self.request.recv(65536)
            except TimeoutError:
                raise _Deadline from None
            if not data:
                return bytes(self._buffer) if self._buffer else b""
            self._buffer += data

    def _send(self, reply: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.request.settimeout(WRITE_TIMEOUT)
            data = json.dumps(reply, ensure_ascii=False, default=str).encode("utf-8") + b"\n"
            self.request.sendall(data)


def _err(exc: KbError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = BACKLOG

    def __init__(self, path: Path, dispatch: Dispatch):
        self.dispatch = dispatch
        self.stopping = False
        self.read_timeout = READ_TIMEOUT
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)
        super().__init__(str(path), _Handler, bind_and_activate=False)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread once one of MAX_HANDLERS slots is free; until then, the accept
        loop waits (new clients queue in the backlog)."""
        while not self._slots.acquire(timeout=0.5):
            if self.stopping:
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_bind(self) -> None:
        old = os.umask(0o177)  # the socket is born 0600: no window in which others could connect
        try:
            super().server_bind()
        finally:
            os.umask(old)
        os.chmod(str(self.server_address), 0o600)

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            method, params = validate(json.loads(line))
            return {"ok": True, "result": self.dispatch(method, params)}
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": _err(BadRequest(f"The request is not valid JSON: {exc}."))}
        except KbError as exc:
            return {"ok": False, "error": _err(exc)}
        except Exception as exc:  # a bug must not kill the watcher; the client gets one clear line
            log.exception("kb watch failed to answer a request")
            return {
                "ok": False,
                "error": _err(KbError(f"kb watch failed to answer: {type(exc).__name__}: {exc}")),
            }


def _private_dir(folder: Path) -> None:
    """Make ``folder`` a 0700 directory owned by us (refusing a symlink or someone else's folder)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise KbError(f"{folder} is not a folder owned by you; kb watch will not put its socket there.")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(folder, 0o700)


class WatchServer:
    """Serves ``dispatch(method, params)`` on a Unix socket at ``path`` from a background thread."""

    def __init__(self, path: Path, dispatch: Dispatch):
        self.path = path
        self._dispatch = dispatch
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        _private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            # Whoever holds the write lock owns the socket: one left here is a killed watcher's.
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()
        self._server = _Server(self.path, self._dispatch)
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 1.0},
            name="kb-watch-server",
            daemon=True,
        )
        self._thread.start()
        log.debug("serving on %s", self.path)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stopping = True
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with contextlib.suppress(OSError):
            self.path.unlink()


def is_socket_private(path: Path) -> bool:
    """True when ``path`` is a 0600 socket owned by us in a 0700 folder owned by us (what tests check)."""
    st, parent = os.lstat(path), os.lstat(path.parent)
    return (
        stat.S_ISSOCK(st.st_mode)
        and stat.S_IMODE(st.st_mode) == 0o600
        and st.st_uid == os.getuid()
        and stat.S_IMODE(parent.st_mode) == 0o700
        and parent.st_uid == os.getuid()
    )


def raw_request(path: Path, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read one reply line (for tests of malformed requests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload)
        with sock.makefile("rb") as fh:
            return fh.readline()
