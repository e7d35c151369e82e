"""Child processes for tests: a free port, ``python -m kb`` in a child, a background child whose log can be
read while it runs (``kb watch``), polling, and a child that runs as the user nobody."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

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


# --- an unprivileged user ----------------------------------------------------------------------------------
NOBODY = 65534  # uid and gid of the user "nobody"


def drop_privileges() -> None:
    """Become the user nobody when this process is root (root reads a ``chmod 000`` file; nobody gets EACCES
    like any user). For a child process, called once it has imported (and loaded) what it needs: the
    interpreter's own files may be out of nobody's reach (e.g. a Python under /root)."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


@contextlib.contextmanager
def unprivileged_folder() -> Iterator[Path]:
    """A fresh folder that a child can enter after :func:`drop_privileges` (pytest's temp folders are private
    to root): under the system's temp folder, mode 0755; removed afterwards. Hand what the child must write
    to it with :func:`give_to_nobody`."""
    folder = Path(tempfile.mkdtemp(prefix="kb-unprivileged-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def give_to_nobody(path: Path) -> None:
    """``path`` and everything under it owned by nobody, when this process is root (else nothing to do)."""
    if os.geteuid() == 0:
        for p in [path, *path.rglob("*")]:
            os.lchown(p, NOBODY, NOBODY)
