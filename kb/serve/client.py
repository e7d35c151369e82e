"""The client side of ``kb watch``: find the live watcher of a workspace and ask it.

While ``kb watch`` runs it owns the index (Chroma does not support two processes on one folder) and answers
``search``, ``ask``, ``status`` and ``index`` requests on a Unix socket (see :mod:`kb.serve.server`). This
module is the client: :func:`connect` finds a live watcher — and while one is alive, waits for it (bounded)
rather than ever opening the index in a second process — :class:`Remote` (a :class:`kb.service.Service`)
sends one request per verb and rebuilds kb's result objects and errors. It imports nothing heavy (no chromadb,
numpy, onnxruntime, model), so a ``kb search`` from another terminal costs a process start and a socket round
trip.

Wire format, one JSON object per line: ``{"v": 1, "method": "search", "params": {...}}`` ->
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"type", "message", "exit_code"}}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import random
import socket
import stat
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kb.errors as errors
from kb.models import Answer, Hit, IndexReport, OnToken, Progress, Status, WatcherStatus
from kb.workspace import Workspace, find_workspace

PROTOCOL = 1
SOCKET_NAME = "watch.sock"
STATUS_NAME = "watch.json"
MAX_REQUEST = 256 * 1024  # bytes of one request line
MAX_RESPONSE = 256 * 1024 * 1024
CONNECT_TIMEOUT = 2.0
WAIT_FOR_OWNER = 30.0  # seconds a client keeps trying to reach a live watcher before a clear error
TIMEOUTS = {"index": None, "ask": 120.0}  # seconds to wait for an answer; default 60


def socket_path(state_dir: Path) -> Path:
    """Where the watcher of ``state_dir`` listens: in the state dir, unless that path is too long for AF_UNIX
    (108 bytes), then ``/tmp/kb-<uid>/<hash>.sock`` (a 0700 folder)."""
    path = state_dir / SOCKET_NAME
    if len(os.fsencode(path)) <= 100:
        return path
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:24]
    return Path("/tmp") / f"kb-{os.getuid()}" / f"{digest}.sock"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class Remote:
    """A connection to the ``kb watch`` of a workspace; methods mirror :class:`kb.KnowledgeBase`."""

    def __init__(self, workspace: Workspace, sock: socket.socket, pid: int):
        self.workspace = workspace
        self.pid = pid
        self._sock = sock
        self._file = sock.makefile("rb")

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one request; the result (JSON) or the watcher's error raised as the same KbError class."""
        params = {k: v for k, v in (params or {}).items() if _jsonable(v)}  # callbacks stay behind
        line = json.dumps({"v": PROTOCOL, "method": method, "params": params}, ensure_ascii=False) + "\n"
        data = line.encode("utf-8")
        if len(data) > MAX_REQUEST:
            raise errors.KbError(
                f"The request to kb watch is too large ({len(data)} bytes; limit {MAX_REQUEST})."
            )
        try:
            self._sock.settimeout(TIMEOUTS.get(method, 60.0))
            self._sock.sendall(data)
            reply = self._file.readline(MAX_RESPONSE)
        except TimeoutError:
            raise errors.KbError(
                f"kb watch (pid {self.pid}) did not answer {method!r} in time. Is it stopped (Ctrl-Z)? "
                "Resume it with: fg, or stop it and try again."
            ) from None
        except OSError as exc:
            raise errors.KbError(
                f"Lost the connection to kb watch (pid {self.pid}): {exc}. Try again."
            ) from None
        if not reply:
            raise errors.KbError(f"kb watch (pid {self.pid}) closed the connection. Try again.")
        try:
            msg = json.loads(reply)
        except ValueError:
            raise errors.KbError(
                f"kb watch (pid {self.pid}) sent a reply that is not JSON. Restart it."
            ) from None
        if not isinstance(msg, dict):
            raise errors.KbError(f"kb watch (pid {self.pid}) sent an unexpected reply. Restart it.")
        if msg.get("ok"):
            return msg.get("result")
        raise _error(msg.get("error") or {})

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The verbs (kb.service.Service), with kb's own result types: the CLI renders them exactly as local
    # results.
    streams_tokens = False  # a model's tokens are not streamed across the socket; the verified answer is

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> list[Hit]:
        params = {
            "query": query,
            "k": k,
            "mode": mode,
            "source_type": _plain(source_type),
            "path": _plain(path),
        }
        return [Hit.from_dict(h) for h in self.call("search", params)["hits"]]

    def ask(
        self,
        question: str,
        *,
        persona: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
        llm: str | None = None,
        on_token: OnToken | None = None,
    ) -> Answer:
        params = {
            "question": question,
            "persona": persona,
            "k": k,
            "mode": mode,
            "llm": llm,
            "source_type": _plain(source_type),
            "path": _plain(path),
        }
        return Answer.from_dict(self.call("ask", params))

    def status(self) -> Status:
        return Status.from_dict(self.call("status"))

    def index(self, progress: Progress | None = None, *, rebuild: bool = False) -> IndexReport:
        if rebuild:  # the watcher is the index's one writer: a rebuild under it would race its runs
            raise errors.KbError(
                f"kb watch (pid {self.pid}) owns this index: stop it, run kb index --rebuild, then start it "
                "again."
            )
        return IndexReport.from_dict(self.call("index"))


def _plain(value: str | Sequence[str] | None) -> str | list[str] | None:
    return value if value is None or isinstance(value, str) else list(value)


def _error(data: dict[str, Any]) -> errors.KbError:
    cls = getattr(errors, str(data.get("type", "")), None)  # every kb error class lives in kb.errors
    if not (isinstance(cls, type) and issubclass(cls, errors.KbError)):
        cls = errors.KbError
    exc = cls(str(data.get("message") or "kb watch reported an error without a message."))
    code = data.get("exit_code")
    if isinstance(code, int) and code != exc.exit_code:
        exc.exit_code = code
    return exc


def connect(
    workspace: Workspace | str | os.PathLike[str] | None, wait: float = WAIT_FOR_OWNER
) -> Remote | None:
    """The live ``kb watch`` of ``workspace``, or None when there is none (then work locally).

    A watcher that is alive but does not accept at once (its backlog is full, or it is starting) is waited
    for, with backoff, up to ``wait`` seconds, then a clear :class:`kb.errors.KbError`: never None while a
    watcher lives, since None means "open the index in this process" (a second process on embedded Chroma).
    A socket nobody listens on, left by a killed watcher, is None."""
    ws = workspace if isinstance(workspace, Workspace) else find_workspace(workspace)
    path = socket_path(ws.state_dir)
    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(path))
            pid, uid, _ = peer_credentials(sock)
        except OSError as exc:
            sock.close()
            busy = isinstance(exc, BlockingIOError | TimeoutError) or exc.errno in (errno.EAGAIN, errno.EINTR)
            if not busy and owner_pid(ws) is None:  # nobody listens, no watcher lives: a socket left behind
                return None
            if time.monotonic() >= deadline:
                owner = owner_pid(ws)
                who = f"kb watch (pid {owner})" if owner else "kb watch"
                raise errors.KbError(
                    f"{who} owns the index of {ws.root} but did not accept a connection within {wait:g} s "
                    "(overloaded, or stopped with Ctrl-Z?). Try again, or stop it; kb does not open the "
                    "index itself while kb watch runs."
                ) from None
            time.sleep(min(delay * (1 + random.random()), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.25)
            continue
        if uid != os.getuid():
            sock.close()
            return None
        return Remote(ws, sock, pid)


def owner_pid(workspace: Workspace) -> int | None:
    """The pid of the workspace's ``kb watch`` when its status file says it runs and that process is alive."""
    try:
        data = json.loads(status_file(workspace).read_text(encoding="utf-8"))
        pid = int(data["pid"]) if isinstance(data, dict) and data.get("running") else 0
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process took the pid
        return None
    return pid


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def encode(result: Any) -> Any:
    """A result of a KnowledgeBase verb as JSON data (full fidelity: ``from_dict`` rebuilds it)."""
    if isinstance(result, list):
        return {"hits": [dataclasses.asdict(h) for h in result]}
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result


def status_file(workspace: Workspace) -> Path:
    return workspace.state_dir / STATUS_NAME


def save_watcher_status(workspace: Workspace, status: WatcherStatus, running: bool) -> None:
    """Record the watcher's status for ``kb status`` to read when it no longer answers (atomic replace)."""
    path = status_file(workspace)
    if not path.parent.is_dir():  # never re-create a deleted workspace
        return
    data = {**dataclasses.asdict(status), "running": running}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)


def last_watcher(workspace: Workspace) -> WatcherStatus | None:
    """What the status file says about the last ``kb watch`` here (called when none answers: not running)."""
    try:
        data = json.loads(status_file(workspace).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    st = WatcherStatus.from_dict(data)
    st.running = False
    if data.get("running"):
        st.last_error = (
            st.last_error or "stopped without a clean shutdown (killed?); the next start reconciles"
        )
    return st
