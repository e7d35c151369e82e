"""Shared fixtures: every test runs offline, with kb state in tmp_path, on real files.

Tests use these fixtures by name and never import this file; shared helpers (the fake embedders, the kb
subprocess runner, the citation check, the web mirror, ...) live in :mod:`kb.testing`.

* ``model_cache``: one ONNX export of the bundled model per test session (the export takes ~10 s).
* ``workspace``: a fresh copy of the sample workspace in ``data/``.
* ``indexed``: that copy, indexed once per session with the real model and a real Chroma (copied per test).
* ``server``: a :class:`kb.testing.WebMirror` on 127.0.0.1 serving ``../shared/resources`` under ``/res/`` and
  a per-test folder (with a junk-laden HTML page) under ``/site/``, plus fault routes for the fetcher's tests.
* ``chroma_server``: a real Chroma server (``chroma run --path <tmp> --host 127.0.0.1 --port <free>``, ready
  once ``GET /api/v2/heartbeat`` answers, stopped with SIGTERM) of the test's own, which it may stop, kill,
  pause and restart (:class:`kb.testing.services.ChromaServer`).

``KB_TEST_STORE=server pytest ...`` runs the tests against a Chroma server instead of the embedded store: one
server for the session, every test's workspace in its own collections on it (``KB_CHROMA_URL``). Tests that
look inside the embedded folder are marked ``embedded_only``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from kb.testing import MirrorHandler, WebMirror, copy_workspace
from kb.testing.services import ChromaServer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESOURCES = ROOT.parent / "shared" / "resources"
STORE = os.environ.get("KB_TEST_STORE", "embedded")  # read before any fixture clears the KB_* variables


# --- descriptors a test leaves open (late in a full run the process once held more than 1,023) ----------
_LEFT_OPEN: list[tuple[int, str]] = []


def _descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True)
def _count_descriptors(request: pytest.FixtureRequest) -> Iterator[None]:
    before = _descriptors()
    yield
    grown = _descriptors() - before
    if grown > 0:
        _LEFT_OPEN.append((grown, request.node.nodeid))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many file descriptors the tests left open, and which tests left the most (a leak shows here)."""
    if _LEFT_OPEN:
        top = ", ".join(f"{nodeid.split('::')[-1][:60]} +{n}" for n, nodeid in sorted(_LEFT_OPEN)[::-1][:8])
        total = sum(n for n, _ in _LEFT_OPEN)
        now = _descriptors()
        terminalreporter.write_line(f"descriptors left open by tests: {total} (now {now}); most: {top}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if STORE == "server":
        skip = pytest.mark.skip(reason="looks inside the embedded Chroma folder (KB_TEST_STORE=server)")
        for item in items:
            if "embedded_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def _session_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """With KB_TEST_STORE=server, one Chroma server for the session and its URL; else None."""
    if STORE != "server":
        yield None
        return
    base = tmp_path_factory.mktemp("session-chroma")
    with ChromaServer(base / "data", base / "chroma.log") as url:
        os.environ["KB_CHROMA_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("KB_CHROMA_URL", None)


@pytest.fixture(autouse=True)
def _offline_and_isolated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _session_store: str | None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key in list(os.environ):
        if key.startswith("KB_") and key != "KB_MODEL_CACHE_DIR":
            monkeypatch.delenv(key)
    if _session_store:
        monkeypatch.setenv("KB_CHROMA_URL", _session_store)


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[ChromaServer]:
    """A Chroma server of this test's own (it may stop, kill, pause or restart it); stopped with SIGTERM."""
    server = ChromaServer(tmp_path / "chroma-server", tmp_path / "chroma-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(autouse=True)
def _shared_model_cache(monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> None:
    monkeypatch.setenv("KB_MODEL_CACHE_DIR", str(model_cache))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_workspace(DATA, tmp_path / "ws")


@pytest.fixture(scope="session")
def _indexed_master(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, _session_store: str | None
) -> Path:
    from kb import KnowledgeBase

    ws = copy_workspace(DATA, tmp_path_factory.mktemp("indexed") / "ws")
    with KnowledgeBase.open(ws, model_cache_dir=model_cache) as kb:
        kb.index()
    return ws


@pytest.fixture
def indexed(tmp_path: Path, _indexed_master: Path) -> Path:
    """A private copy of the indexed sample workspace (index included)."""
    dest = tmp_path / "ws"
    shutil.copytree(_indexed_master, dest, symlinks=True)
    if STORE == "server":  # a copy gets a workspace id (collections) of its own: fill them from the manifest
        from kb import KnowledgeBase

        with KnowledgeBase.open(dest) as kb:
            assert kb.index().chunks_embedded == 0
    return dest


# --- a web server for the fetcher and the resources -------------------------------------------------------
JUNK_HTML = """<!doctype html><html><head><title>Pagination guide - Example Docs</title>
<script>var tracking = "TRACKING_SCRIPT"; function track(){}</script><style>.nav{color:red}</style></head>
<body><nav><ul><li><a href="/">Home</a></li><li><a href="/about">About NAVLINK</a></li>
<li><a href="/blog">Blog</a></li></ul></nav>
<header><div class="cookie">We use cookies COOKIEBANNER. Accept all?</div></header>
<aside class="sidebar">Related posts SIDEBARJUNK <a href="/x">x</a></aside>
<main><article><h1>Pagination for large datasets</h1>
<p>Every list method must support pagination from the start, because adding it later is a
backwards-incompatible change for clients that expect the full collection.</p>
<h2>Page tokens</h2>
<p>Use opaque page tokens rather than offsets; offsets skip or repeat items when the collection changes
between requests.</p><ul><li>Default page size of 50</li><li>Maximum page size of 1000</li></ul>
</article></main><footer>Copyright 2026 FOOTERJUNK. <a href="/privacy">Privacy</a></footer>
<script>console.log("SECOND_SCRIPT")</script></body></html>"""

FAULTS = {
    "/big": (200, b"x" * 300_000, "text/plain"),
    "/binary": (200, b"\x00\x01binary", "application/octet-stream"),
    "/error": (500, b"oops", "text/plain"),
}


class FaultyHandler(MirrorHandler):
    """The mirror, plus: /redirect/N/rest (N hops, then /rest), /to?url=U (one hop to U), /slow (2 s), /big
    (300 kB), /big-chunked (1 MB with no length), /binary, /error (HTTP 500)."""

    def route(self, path: str, query: str) -> None:
        if path.startswith("/redirect/"):
            _, _, n, rest = path.split("/", 3)
            return self.reply(
                302, headers={"Location": f"/redirect/{int(n) - 1}/{rest}" if int(n) > 1 else f"/{rest}"}
            )
        if path == "/to":
            return self.reply(302, headers={"Location": parse_qs(query)["url"][0]})
        if path == "/slow":
            time.sleep(2)
            return self.reply(200, b"# late\n", "text/markdown")
        if path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"y" * 10_000)
            self.close_connection = True
            return None
        if path in FAULTS:
            return self.reply(*FAULTS[path])
        return super().route(path, query)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebMirror]:
    site = tmp_path / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "junk.html").write_text(JUNK_HTML, encoding="utf-8")
    with WebMirror({"/res/": RESOURCES, "/site/": site}, FaultyHandler) as srv:
        yield srv
