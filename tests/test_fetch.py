"""The fetcher (ingest/fetch.py) against a real HTTP server on 127.0.0.1: caps, redirects, 304, HTML cleaning, SSRF.

``LocalServer`` serves ``../shared/resources`` under ``/res/`` (with ETag, Last-Modified and directory listings, like
a static web server) and a per-test folder under ``/site/``, plus routes for redirects, slow and oversized
responses. tests/test_resources.py uses it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from ingest.fetch import (
    Fetcher,
    FetchError,
    FetchPolicy,
    FetchRefused,
    FetchResult,
    GuardedTransport,
    github_repo,
    html_to_page,
    to_page,
)
from tests.conftest import SHARED

RESOURCES = SHARED / "resources"
TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".pdf": "application/pdf",
}

JUNK_HTML = """<!doctype html><html><head><title>Pagination guide - Example Docs</title>
<script>var tracking = "TRACKING_SCRIPT"; function track(){}</script><style>.nav{color:red}</style></head>
<body><nav><ul><li><a href="/">Home</a></li><li><a href="/about">About NAVLINK</a></li><li><a href="/blog">Blog</a></li>
</ul></nav><header><div class="cookie">We use cookies COOKIEBANNER. Accept all?</div></header>
<aside class="sidebar">Related posts SIDEBARJUNK <a href="/x">x</a></aside>
<main><article><h1>Pagination for large datasets</h1>
<p>Every list method must support pagination from the start, because adding it later is a backwards-incompatible
change for clients that expect the full collection.</p>
<h2>Page tokens</h2>
<p>Use opaque page tokens rather than offsets; offsets skip or repeat items when the collection changes between
requests.</p><ul><li>Default page size of 50</li><li>Maximum page size of 1000</li></ul>
</article></main><footer>Copyright 2026 FOOTERJUNK. <a href="/privacy">Privacy</a></footer>
<script>console.log("SECOND_SCRIPT")</script></body></html>"""


class _Handler(BaseHTTPRequestHandler):
    server: LocalServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.server.requests.append(path)
        if path.startswith("/redirect/"):  # /redirect/N/rest -> N hops, then /rest
            _, _, n, rest = path.split("/", 3)
            target = f"/redirect/{int(n) - 1}/{rest}" if int(n) > 1 else f"/{rest}"
            return self._send(302, b"", headers={"Location": target})
        if path == "/to":
            return self._send(302, b"", headers={"Location": parse_qs(parts.query)["url"][0]})
        if path == "/slow":
            time.sleep(2)
            return self._send(200, b"# late\n", "text/markdown")
        if path == "/big":
            return self._send(200, b"x" * 300_000, "text/plain")
        if path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"y" * 10_000)
            self.close_connection = True
            return None
        if path == "/binary":
            return self._send(200, b"\x00\x01binary", "application/octet-stream")
        if path == "/error":
            return self._send(500, b"oops", "text/plain")
        for prefix, root in (("/res/", RESOURCES), ("/site/", self.server.site)):
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return self._file(root, path, prefix)
        return self._send(404, b"not found", "text/plain")

    def _file(self, root: Path, path: str, prefix: str) -> None:
        rel = path[len(prefix) :] if path.startswith(prefix) else ""
        target = (root / rel).resolve()
        if not target.is_relative_to(root.resolve()) or not target.exists():
            return self._send(404, b"not found", "text/plain")
        if target.is_dir():
            if not path.endswith("/"):
                return self._send(301, b"", headers={"Location": path + "/"})
            items = "".join(
                f'<li><a href="{html.escape(p.name)}{"/" if p.is_dir() else ""}">{html.escape(p.name)}</a></li>'
                for p in sorted(target.iterdir())
            )
            listing = f"<html><head><title>Index of {path}</title></head><body><h1>Index of {path}</h1><ul>{items}</ul></body></html>"
            data, ctype, modified = listing.encode(), "text/html; charset=utf-8", target.stat().st_mtime
        else:
            data = target.read_bytes()
            ctype, modified = (
                TYPES.get(target.suffix.lower(), "application/octet-stream"),
                target.stat().st_mtime,
            )
        etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            return self._send(304, b"", headers={"ETag": etag})
        since = self.headers.get("If-Modified-Since")
        if (
            since
            and not self.headers.get("If-None-Match")
            and parsedate_to_datetime(since).timestamp() >= int(modified)
        ):
            return self._send(304, b"")
        return self._send(
            200, data, ctype, {"ETag": etag, "Last-Modified": formatdate(modified, usegmt=True)}
        )

    def _send(
        self, code: int, body: bytes, ctype: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.server.statuses.append(code)
        self.send_response(code)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.site = site
        self.requests: list[str] = []
        self.statuses: list[int] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serving(site: Path) -> Iterator[LocalServer]:
    """A LocalServer in a thread, serving ``site`` (with the junk page) under /site/ and the copies under /res/."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "junk.html").write_text(JUNK_HTML, encoding="utf-8")
    srv = LocalServer(site)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    with serving(tmp_path / "site") as srv:
        yield srv


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a socket connects to during the test (checked: no traffic to refused addresses)."""
    seen: list[str] = []
    real = socket.create_connection

    def recording(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        seen.append(str(address[0]))
        return real(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", recording)
    return seen


def allowed(**kw: object) -> Fetcher:
    return Fetcher(FetchPolicy(allow_hosts=("127.0.0.1",), **kw))  # type: ignore[arg-type]


needs_shared = pytest.mark.skipif(
    not RESOURCES.is_dir(), reason=f"offline resource copies absent: {RESOURCES}"
)


@needs_shared
def test_markdown_fetch_then_conditional_304(server: LocalServer) -> None:
    with allowed() as f:
        first = f.get(f"{server.base}/res/google-aip/0158.md")
        assert first.status == 200 and first.content_type == "text/markdown" and first.etag
        assert b"# Pagination" in first.content and first.last_modified
        again = f.get(
            f"{server.base}/res/google-aip/0158.md", etag=first.etag, last_modified=first.last_modified
        )
    assert again.not_modified and again.content == b""
    assert server.statuses[-1] == 304
    page = to_page(first)
    assert (
        page.title == "Pagination" and page.metadata["id"] == 158 and page.markdown.startswith("# Pagination")
    )


@needs_shared
def test_redirect_chain_is_followed_and_capped(server: LocalServer) -> None:
    with allowed() as f:
        r = f.get(f"{server.base}/redirect/3/res/twelve-factor/config.md")
        assert (
            r.status == 200 and r.final_url.endswith("/res/twelve-factor/config.md") and len(r.redirects) == 3
        )
    with allowed(max_redirects=2) as f, pytest.raises(FetchError, match="too many redirects"):
        f.get(f"{server.base}/redirect/3/res/twelve-factor/config.md")


def test_oversized_responses_are_cut(server: LocalServer) -> None:
    with allowed(max_bytes=100_000) as f:
        with pytest.raises(FetchError, match="too large"):
            f.get(f"{server.base}/big")  # declared Content-Length
        with pytest.raises(FetchError, match="too large"):
            f.get(f"{server.base}/big-chunked")  # no length: stopped while streaming


def test_slow_response_times_out(server: LocalServer) -> None:
    started = time.monotonic()
    with allowed(timeout=0.5) as f, pytest.raises(FetchError, match="timed out"):
        f.get(f"{server.base}/slow")
    assert time.monotonic() - started < 2.5


def test_404_is_unavailable_500_is_an_error_and_types_are_checked(server: LocalServer) -> None:
    with allowed() as f:
        with pytest.raises(FetchError) as e404:
            f.get(f"{server.base}/nothing-here")
        assert e404.value.unavailable and e404.value.status == 404 and "not found" in str(e404.value)
        with pytest.raises(FetchError) as e500:
            f.get(f"{server.base}/error")
        assert not e500.value.unavailable and "HTTP 500" in str(e500.value)
        with pytest.raises(FetchError, match="content type 'application/octet-stream'"):
            f.get(f"{server.base}/binary")


def test_html_junk_is_removed(server: LocalServer) -> None:
    with allowed() as f:
        page = to_page(f.get(f"{server.base}/site/junk.html"))
    assert page.title and "Pagination" in page.title
    assert "# Pagination for large datasets" in page.markdown and "## Page tokens" in page.markdown
    assert "opaque page tokens" in page.markdown and "Maximum page size of 1000" in page.markdown
    for junk in (
        "TRACKING_SCRIPT",
        "SECOND_SCRIPT",
        "NAVLINK",
        "COOKIEBANNER",
        "SIDEBARJUNK",
        "FOOTERJUNK",
        "color:red",
    ):
        assert junk not in page.markdown, junk


def test_directory_listing_is_a_hub_not_a_page() -> None:
    listing = (
        "<html><head><title>Index of /d/</title></head><body><h1>Index of /d/</h1><ul>"
        + "".join(f'<li><a href="page-{i}.md">page-{i}.md</a></li>' for i in range(12))
        + "</ul></body></html>"
    )
    page = html_to_page(listing, "http://example.org/d/")
    assert page.markdown == "" and len(page.links) == 12 and page.links[0] == "http://example.org/d/page-0.md"


def test_ssrf_redirects_to_metadata_and_private_addresses_refused_before_connecting(
    server: LocalServer, connections: list[str]
) -> None:
    with allowed() as f:
        for target in (
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/admin",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
        ):
            with pytest.raises(FetchRefused) as exc:
                f.get(f"{server.base}/to?url={target}")
            assert "allow_hosts" in str(exc.value)
    assert set(connections) == {"127.0.0.1"}, connections  # only the allow-listed test server was contacted
    assert not any(a.startswith(("169.254", "10.", "fd00", "::ffff")) for a in connections)


def test_ssrf_loopback_by_name_and_by_ip_refused_without_allow_list(
    server: LocalServer, connections: list[str]
) -> None:
    port = server.server_address[1]
    with Fetcher(FetchPolicy()) as f:
        for url in (
            f"http://localhost:{port}/res/",
            f"http://127.0.0.1:{port}/res/",
            f"http://[::1]:{port}/",
        ):
            with pytest.raises(FetchRefused, match="loopback"):
                f.get(url)
        for url in (
            "file:///etc/passwd",
            "ftp://127.0.0.1/x",
            "gopher://x/",
            f"http://user:pw@127.0.0.1:{port}/",
        ):
            with pytest.raises(FetchRefused):
                f.get(url)
    assert connections == [] and server.requests == []


def test_connect_time_check_guards_even_without_the_pre_check(server: LocalServer) -> None:
    """The transport vets the address it connects to (a DNS answer that changes after the check is caught)."""
    with httpx.Client(transport=GuardedTransport(FetchPolicy())) as client, pytest.raises(FetchRefused):
        client.get(f"{server.base}/res/")
    assert server.requests == []


def test_allow_list_by_name_and_by_network(server: LocalServer) -> None:
    port = server.server_address[1]
    for entry in ("localhost", "127.0.0.0/8"):
        with Fetcher(FetchPolicy(allow_hosts=(entry,))) as f:
            assert f.get(f"http://localhost:{port}/site/junk.html").status == 200
    assert FetchPolicy(allow_hosts=("localhost",)).check_url(f"http://localhost:{port}/")
    with pytest.raises(FetchRefused):  # a name entry does not open its addresses to other names
        FetchPolicy(allow_hosts=("127.0.0.2",)).check_url(f"http://localhost:{port}/")


def test_github_repo_urls_and_markdown_links() -> None:
    assert github_repo("https://github.com/donnemartin/system-design-primer") == (
        "donnemartin",
        "system-design-primer",
    )
    assert github_repo("https://github.com/a/b.git") == ("a", "b")
    assert (
        github_repo("https://github.com/a/b/issues/1") is None
        and github_repo("https://12factor.net/") is None
    )
    md = b"# T\n\nSee [x](solutions/a/README.md), ![img](images/a.png), [ext](https://example.org/#top) and [s](#sec).\n"
    page = to_page(FetchResult("u", "https://h.example/repo/README.md", 200, md, "text/markdown"))
    assert page.links == ["https://h.example/repo/solutions/a/README.md", "https://example.org/"]
    assert page.title == "T"


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer is ``text`` (built by hand: no PDF writer needed)."""
    content = f"BT /F1 18 Tf 72 700 Td ({text}) Tj ET".encode()
    objs = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]/Contents 4 0 R/Resources<</Font<</F1 5 0 R>>>>>>",
        b"<</Length %d>>stream\n" % len(content) + content + b"\nendstream",
        b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(
        b"%010d 00000 n \n" % o for o in offsets
    )
    return out + b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)


def test_pdf_goes_through_the_pdf_loader(server: LocalServer) -> None:
    (server.site / "guide.pdf").write_bytes(tiny_pdf("Cursor pagination keeps pages stable."))
    with allowed() as f:
        result = f.get(f"{server.base}/site/guide.pdf")
    assert result.content_type == "application/pdf"
    assert to_page(result).markdown.strip() == "Cursor pagination keeps pages stable."
