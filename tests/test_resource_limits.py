"""Documented resource behaviours that had no test, against a real HTTP server on 127.0.0.1:

* ``max_depth`` / ``max_pages``: how far a resource's links are followed (README "Recommended resources");
* HTTP 401/402/403/404/410/451 mark a resource ``unavailable``, a 5xx marks it ``error``;
* the SSRF guard (ingest/guard.py) refuses CGNAT, multicast, reserved and unspecified addresses — by IP, by a
  name resolving to one, and as a redirect target — before any connection is opened.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.fetch import Fetcher
from ingest.guard import FetchError, FetchPolicy, FetchRefused
from kb import KnowledgeBase
from kb.testing import FakeEmbedder, MirrorHandler, WebMirror


class StatusHandler(MirrorHandler):
    """The mirror, plus ``/status/NNN/...``: answers HTTP NNN."""

    def route(self, path: str, query: str) -> None:
        if path.startswith("/status/"):
            return self.reply(int(path.split("/")[2]), b"no", "text/plain")
        return super().route(path, query)


SITE = {  # a resource's pages: index -> a, b, c (depth 1) -> d (depth 2) -> e (depth 3)
    "index.md": "# Index\n\nSee [A](a.md), [B](b.md) and [C](c.md).\n",
    "a.md": "# A\n\nAlpha page. Deeper: [D](deep/d.md).\n",
    "b.md": "# B\n\nBravo page.\n",
    "c.md": "# C\n\nCharlie page.\n",
    "deep/d.md": "# D\n\nDelta page. Deeper: [E](e.md).\n",
    "deep/e.md": "# E\n\nEcho page.\n",
}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[WebMirror]:
    root = tmp_path / "site"
    for rel, text in SITE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    with WebMirror({"/site/": root}, StatusHandler) as srv:
        yield srv


def fetch(tmp_path: Path, urls: list[str], settings: str = "") -> dict[str, object]:
    """``kb.fetch_resources()`` in a fresh workspace whose kb.toml adds ``urls``; outcomes by URL."""
    ws = tmp_path / f"ws{len(list(tmp_path.glob('ws*')))}"
    (ws / ".workos/context").mkdir(parents=True)
    added = ", ".join(f'"{u}"' for u in urls)
    (ws / "kb.toml").write_text(
        f'[resources]\npersonas = []\nadd = [{added}]\nallow_hosts = ["127.0.0.1"]\n{settings}\n',
        encoding="utf-8",
    )
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        return {o.url: o for o in kb.fetch_resources().resources}


@pytest.mark.parametrize(
    ("settings", "pages"),
    [
        ("", ["index.md", "a.md", "b.md", "c.md"]),  # the defaults: max_depth 1, max_pages 200
        ("max_depth = 0", ["index.md"]),
        ("max_depth = 2", ["index.md", "a.md", "b.md", "c.md", "deep/d.md"]),
        ("max_depth = 3", list(SITE)),
        ("max_depth = 3\nmax_pages = 2", ["index.md", "a.md"]),
    ],
)
def test_max_depth_and_max_pages_bound_the_crawl(
    site: WebMirror, tmp_path: Path, settings: str, pages: list[str]
) -> None:
    url = f"{site.base}/site/index.md"
    outcome = fetch(tmp_path, [url], settings)[url]
    assert outcome.status == "fetched", outcome  # type: ignore[attr-defined]
    assert sorted(site.requests) == sorted(f"/site/{p}" for p in pages), "exactly these pages were requested"
    assert outcome.pages_written == len(pages)  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [401, 402, 403, 404, 410, 451])
def test_pages_that_cannot_be_had_are_unavailable(site: WebMirror, status: int) -> None:
    with Fetcher(FetchPolicy(allow_hosts=("127.0.0.1",))) as f, pytest.raises(FetchError) as exc:
        f.get(f"{site.base}/status/{status}/doc")
    assert exc.value.unavailable and exc.value.status == status and f"HTTP {status}" in str(exc.value)


def test_resources_answering_401_403_410_451_are_listed_unavailable_and_5xx_as_error(
    site: WebMirror, tmp_path: Path
) -> None:
    urls = {code: f"{site.base}/status/{code}/doc" for code in (401, 403, 410, 451, 500, 503)}
    outcomes = fetch(tmp_path, list(urls.values()))
    for code, url in urls.items():
        o = outcomes[url]
        expected = "unavailable" if code < 500 else "error"
        assert (o.status, f"HTTP {code}" in o.reason) == (expected, True), (code, o)  # type: ignore[attr-defined]
    assert "legal" in outcomes[urls[451]].reason  # type: ignore[attr-defined]
    assert not list(tmp_path.glob("ws*/.workos/resources/*/*.md")), "nothing was written"


# --- the SSRF guard: addresses that are not public --------------------------------------------------------
NOT_PUBLIC = {
    "100.64.0.1": "CGNAT (RFC 6598)",
    "100.127.255.254": "CGNAT, last address",
    "224.0.0.1": "multicast (all hosts)",
    "239.255.255.250": "multicast (SSDP)",
    "ff02::1": "IPv6 multicast",
    "240.0.0.1": "reserved (class E)",
    "255.255.255.255": "broadcast",
    "0.0.0.0": "unspecified",
    "::": "IPv6 unspecified",
    "::ffff:100.64.0.1": "CGNAT as an IPv4-mapped IPv6 address",
}


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a socket connects to during the test."""
    seen: list[str] = []
    real = socket.create_connection

    def recording(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        seen.append(str(address[0]))
        return real(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", recording)
    return seen


def literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@pytest.mark.parametrize("address", list(NOT_PUBLIC))
def test_cgnat_multicast_reserved_and_unspecified_addresses_are_refused(
    address: str, connections: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def resolve(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host == "inside.example":  # a name whose DNS answer is the address
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with Fetcher(FetchPolicy()) as f:
        for url in (f"http://{literal(address)}/admin", "http://inside.example/admin"):
            with pytest.raises(FetchRefused, match="refused to connect") as exc:
                f.get(url)
            assert "allow_hosts" in str(exc.value), "the message names the setting that would allow it"
    assert connections == []
    allowed = address.removeprefix("::ffff:")  # a mapped address is allowed by its IPv4 form
    assert FetchPolicy(allow_hosts=(allowed,)).check_url(f"http://{literal(address)}/"), (
        "allow_hosts opens it"
    )


def test_a_redirect_to_such_an_address_is_refused(server: WebMirror, connections: list[str]) -> None:
    with Fetcher(FetchPolicy(allow_hosts=("127.0.0.1",))) as f:
        for address in ("100.64.0.1", "224.0.0.251", "240.0.0.1"):
            with pytest.raises(FetchRefused):
                f.get(f"{server.base}/to?url=http://{address}/")
    assert set(connections) == {"127.0.0.1"}, connections
