"""The fetcher (ingest/fetch.py) against a real HTTP server on 127.0.0.1: caps, redirects, 304, HTML cleaning,
SSRF.

The ``server`` fixture (tests/conftest.py) is a :class:`kb.testing.WebMirror`: ``../shared/resources`` under
``/res/`` (with ETag, Last-Modified and directory listings, like a static web server), a per-test folder under
``/site/``, plus routes for redirects, slow, oversized and failing responses.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from ingest.fetch import Fetcher, FetchResult, github_repo, html_to_page, to_page
from ingest.guard import FetchError, FetchPolicy, FetchRefused, GuardedTransport
from kb.testing import WebMirror

RESOURCES = Path(__file__).resolve().parents[2] / "shared" / "resources"


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
def test_markdown_fetch_then_conditional_304(server: WebMirror) -> None:
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
def test_redirect_chain_is_followed_and_capped(server: WebMirror) -> None:
    with allowed() as f:
        r = f.get(f"{server.base}/redirect/3/res/twelve-factor/config.md")
        assert (
            r.status == 200 and r.final_url.endswith("/res/twelve-factor/config.md") and len(r.redirects) == 3
        )
    with allowed(max_redirects=2) as f, pytest.raises(FetchError, match="too many redirects"):
        f.get(f"{server.base}/redirect/3/res/twelve-factor/config.md")


def test_oversized_responses_are_cut(server: WebMirror) -> None:
    with allowed(max_bytes=100_000) as f:
        with pytest.raises(FetchError, match="too large"):
            f.get(f"{server.base}/big")  # declared Content-Length
        with pytest.raises(FetchError, match="too large"):
            f.get(f"{server.base}/big-chunked")  # no length: stopped while streaming


def test_slow_response_times_out(server: WebMirror) -> None:
    started = time.monotonic()
    with allowed(timeout=0.5) as f, pytest.raises(FetchError, match="timed out"):
        f.get(f"{server.base}/slow")
    assert time.monotonic() - started < 2.5


def test_404_is_unavailable_500_is_an_error_and_types_are_checked(server: WebMirror) -> None:
    with allowed() as f:
        with pytest.raises(FetchError) as e404:
            f.get(f"{server.base}/nothing-here")
        assert e404.value.unavailable and e404.value.status == 404 and "not found" in str(e404.value)
        with pytest.raises(FetchError) as e500:
            f.get(f"{server.base}/error")
        assert not e500.value.unavailable and "HTTP 500" in str(e500.value)
        with pytest.raises(FetchError, match="content type 'application/octet-stream'"):
            f.get(f"{server.base}/binary")


def test_html_junk_is_removed(server: WebMirror) -> None:
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
    server: WebMirror, connections: list[str]
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
    server: WebMirror, connections: list[str]
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


def test_connect_time_check_guards_even_without_the_pre_check(server: WebMirror) -> None:
    """The transport vets the address it connects to (a DNS answer that changes after the check is caught)."""
    with httpx.Client(transport=GuardedTransport(FetchPolicy())) as client, pytest.raises(FetchRefused):
        client.get(f"{server.base}/res/")
    assert server.requests == []


def test_allow_list_by_name_and_by_network(server: WebMirror) -> None:
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
    md = (
        b"# T\n\nSee [x](solutions/a/README.md), ![img](images/a.png), [ext](https://example.org/#top) "
        b"and [s](#sec).\n"
    )
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


def test_pdf_goes_through_the_pdf_loader(server: WebMirror) -> None:
    (server.mounts["/site/"] / "guide.pdf").write_bytes(tiny_pdf("Cursor pagination keeps pages stable."))
    with allowed() as f:
        result = f.get(f"{server.base}/site/guide.pdf")
    assert result.content_type == "application/pdf"
    assert to_page(result).markdown.strip() == "Cursor pagination keeps pages stable."
