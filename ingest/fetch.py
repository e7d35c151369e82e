"""Fetching a web page safely, and turning it into markdown. Independent of kb (never imports it).

The fetcher is an SSRF surface, so every request goes through one policy (:class:`FetchPolicy`):

* only ``http`` and ``https``;
* the host is resolved and EVERY address must be public: loopback, private, link-local (cloud metadata
  169.254.169.254), CGNAT, multicast, reserved and unspecified addresses are refused unless the host (by name) or
  the address (by IP or CIDR) is in ``allow_hosts``. The check runs before any connection is opened, again on
  every redirect hop (redirects are followed by hand), and once more at connect time on the very address the
  socket connects to (so a DNS answer that changes between check and connect cannot slip through);
* caps on redirects, bytes (streamed: the body stops at the cap) and time (per read and for the whole response);
* a content-type allow-list (HTML, markdown, plain text, PDF).

Every refusal and failure is a :class:`FetchError` whose message says what happened; ``unavailable`` tells a
resource that cannot be had (404, 410, 401/403, 451) from a transient failure.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import httpx

ALLOWED_TYPES = (
    "text/html",
    "application/xhtml+xml",
    "text/markdown",
    "text/x-markdown",
    "text/plain",
    "application/pdf",
)
_UNAVAILABLE_STATUS = {
    401: "needs a login",
    402: "behind a paywall",
    403: "access is forbidden",
    404: "not found",
    410: "gone",
    451: "unavailable for legal reasons",
}
_GITHUB_REPO = re.compile(r"^https?://(?:www\.)?github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")
_README_NAMES = ("README.md", "readme.md", "README.rst", "README.txt", "README")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """A page could not be fetched; the message is the reason shown to the user."""

    def __init__(
        self, message: str, *, unavailable: bool = False, status: int | None = None, unsupported: bool = False
    ):
        super().__init__(message)
        self.unavailable = unavailable
        self.status = status
        self.unsupported = unsupported  # a content type kb does not read (a linked image, archive, ...)


class FetchRefused(FetchError):
    """The request was refused by the policy before any connection was attempted."""


@dataclass(frozen=True)
class FetchPolicy:
    allow_hosts: tuple[str, ...] = ()
    timeout: float = 20.0
    max_bytes: int = 5_000_000
    max_redirects: int = 5
    content_types: tuple[str, ...] = ALLOWED_TYPES
    user_agent: str = "kb-resources/0.1 (+https://github.com/; offline knowledge base)"

    def _allowed(self) -> tuple[set[str], list[Network]]:
        names: set[str] = set()
        nets: list[Network] = []
        for entry in self.allow_hosts:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return names, nets

    def vet(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return its addresses if ALL may be contacted; raise :class:`FetchRefused` otherwise."""
        host = host.strip("[]").lower().rstrip(".")
        names, nets = self._allowed()
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError(f"cannot resolve host {host!r} ({exc}); check the URL or the network") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise FetchError(f"host {host!r} has no address")
        if host in names:
            return addresses
        for text in addresses:
            addr = _unmap(ipaddress.ip_address(text.split("%", 1)[0]))
            if _is_public(addr) or any(addr in net for net in nets):
                continue
            shown = host if host == text else f"{host} ({text})"
            raise FetchRefused(
                f"refused to connect to {shown}: {_kind(addr)} addresses are not fetched. If this host is "
                "trusted, add it to [resources] allow_hosts in kb.toml (or KB_RESOURCES_ALLOW_HOSTS)."
            )
        return addresses

    def check_url(self, url: str) -> list[str]:
        """Refuse URLs that are not http(s) or whose host is not allowed (see :meth:`vet`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchRefused(f"refused {url!r}: only http:// and https:// URLs are fetched")
        if not parts.hostname:
            raise FetchRefused(f"refused {url!r}: no host in the URL")
        if parts.username or parts.password:
            raise FetchRefused(f"refused {url!r}: URLs with credentials are not fetched")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise FetchRefused(f"refused {url!r}: invalid port") from None
        return self.vet(parts.hostname, port)


def _unmap(addr: Address) -> Address:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _is_public(addr: Address) -> bool:
    return bool(addr.is_global) and not (addr.is_multicast or addr.is_reserved or addr.is_unspecified)


def _kind(addr: Address) -> str:
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local (cloud metadata)"
    if addr.is_private:
        return "private-network"
    if addr.is_multicast:
        return "multicast"
    return "non-public"


class _GuardedBackend:
    """httpcore network backend that vets the address it connects to (DNS rebinding cannot bypass the check)."""

    def __init__(self, inner: Any, policy: FetchPolicy):
        self._inner = inner
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        address = self._policy.vet(host, port)[0]
        return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the policy's address check at connect time."""

    def __init__(self, policy: FetchPolicy, **kwargs: Any):
        super().__init__(**kwargs)
        pool = getattr(self, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:  # pragma: no cover - an httpx/httpcore release changed its internals
            raise RuntimeError("cannot install the connect-time address check on this httpx version")
        pool._network_backend = _GuardedBackend(backend, policy)  # type: ignore[union-attr]


@dataclass
class FetchResult:
    url: str  # the URL asked for
    final_url: str  # after redirects
    status: int  # 200, or 304 (not modified: ``content`` is empty)
    content: bytes = b""
    content_type: str = ""
    charset: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    redirects: list[str] = field(default_factory=list)

    @property
    def not_modified(self) -> bool:
        return self.status == 304


class Fetcher:
    """GET with the policy applied at every hop. ``transport`` may be injected (tests); it is used as given."""

    def __init__(self, policy: FetchPolicy | None = None, transport: httpx.BaseTransport | None = None):
        self.policy = policy or FetchPolicy()
        self._client = httpx.Client(
            transport=transport or GuardedTransport(self.policy),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the address check must see the real target
            timeout=httpx.Timeout(self.policy.timeout),
            headers={"User-Agent": self.policy.user_agent},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, url: str, *, etag: str | None = None, last_modified: str | None = None) -> FetchResult:
        deadline = time.monotonic() + self.policy.timeout
        current = url
        redirects: list[str] = []
        for _hop in range(self.policy.max_redirects + 1):
            self.policy.check_url(current)  # before any connection: scheme, host and every address
            headers = {"Accept": ", ".join(self.policy.content_types) + ";q=0.9, */*;q=0.1"}
            if etag:
                headers["If-None-Match"] = etag
            if last_modified:
                headers["If-Modified-Since"] = last_modified
            try:
                with self._client.stream("GET", current, headers=headers) as response:
                    if response.status_code in (301, 302, 303, 307, 308):
                        location = response.headers.get("location", "")
                        if not location:
                            raise FetchError(
                                f"{current} redirected (HTTP {response.status_code}) without a Location"
                            )
                        redirects.append(current)
                        current = urljoin(current, location)
                        continue
                    return self._read(url, current, response, deadline, redirects)
            except httpx.TimeoutException:
                raise FetchError(f"timed out after {self.policy.timeout:g} s fetching {current}") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"network error fetching {current}: {exc or type(exc).__name__}") from None
        raise FetchError(f"too many redirects (more than {self.policy.max_redirects}) starting at {url}")

    def _read(
        self, url: str, current: str, response: httpx.Response, deadline: float, redirects: list[str]
    ) -> FetchResult:
        status = response.status_code
        etag = response.headers.get("etag")
        last_modified = response.headers.get("last-modified")
        if status == 304:
            return FetchResult(url, current, 304, etag=etag, last_modified=last_modified, redirects=redirects)
        if status in _UNAVAILABLE_STATUS:
            raise FetchError(
                f"HTTP {status} ({_UNAVAILABLE_STATUS[status]}) for {current}",
                unavailable=True,
                status=status,
            )
        if status != 200:
            raise FetchError(f"HTTP {status} for {current}", status=status)
        raw_type = response.headers.get("content-type", "")
        media = raw_type.split(";", 1)[0].strip().lower()
        if media not in self.policy.content_types:
            raise FetchError(
                f"content type {media or '(none)'!r} of {current} is not one kb reads "
                f"(allowed: {', '.join(self.policy.content_types)})",
                unsupported=True,
            )
        cap = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise FetchError(f"{current} is too large ({int(declared):,} bytes > the {cap:,}-byte cap)")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > cap:
                raise FetchError(f"{current} is too large (more than the {cap:,}-byte cap)")
            if time.monotonic() > deadline:
                raise FetchError(f"timed out after {self.policy.timeout:g} s reading {current}")
            chunks.append(chunk)
        charset = response.charset_encoding
        return FetchResult(
            url, current, 200, b"".join(chunks), media, charset, etag, last_modified, redirects
        )


# --- what a URL means ---------------------------------------------------------------------------------------


def github_repo(url: str) -> tuple[str, str] | None:
    """(owner, repo) when ``url`` is a GitHub repository's home page."""
    m = _GITHUB_REPO.match(url.strip())
    return (m.group(1), m.group(2)) if m else None


def github_raw_base(owner: str, repo: str) -> str:
    return f"https://raw.githubusercontent.com/{owner}/{repo}/HEAD/"


def readme_candidates() -> tuple[str, ...]:
    return _README_NAMES


# --- content -> markdown ------------------------------------------------------------------------------------


@dataclass
class Page:
    markdown: str  # "" for a page with no main text (a navigation or listing page)
    title: str | None
    links: list[str]  # absolute URLs found in the page, fragments removed, in document order
    metadata: dict[str, Any] = field(default_factory=dict)  # the page's own front matter, if markdown


_MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_REF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML_HREF = re.compile(r"<a\s[^>]*?href\s*=\s*[\"']([^\"']+)[\"']", re.I)
_ATX_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)
_SETEXT_TITLE = re.compile(r"^(\S.*)\n=+\s*$", re.M)


def to_page(result: FetchResult) -> Page:
    """Turn fetched bytes into markdown (HTML: main content only; PDF: through the PDF loader) and its links."""
    from ingest.loaders import LoadError, decode_text, load_document, split_front_matter

    base = result.final_url
    try:
        if result.content_type == "application/pdf":
            doc = load_document(result.content, "pdf")
            title = doc.metadata.get("title")
            return Page(doc.text, title if isinstance(title, str) else None, [])
        text = _decode(result.content, result.charset, decode_text)
    except LoadError as exc:
        raise FetchError(f"{base}: {exc}") from None
    if result.content_type in ("text/html", "application/xhtml+xml"):
        return html_to_page(text, base)
    meta, body_line, _problem = split_front_matter(text)
    body = "\n".join(text.splitlines()[body_line - 1 :]) if meta else text
    links = _absolute(base, [*_MD_LINK.findall(body), *_MD_REF.findall(body), *_HTML_HREF.findall(body)])
    title = meta.get("title") if isinstance(meta.get("title"), str) else markdown_title(body)
    own = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
    return Page(body.strip("\n") + "\n", title, links, own)


def _decode(data: bytes, charset: str | None, fallback: Any) -> str:
    if charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    return str(fallback(data))


def markdown_title(text: str) -> str | None:
    candidates = [m for m in (_ATX_TITLE.search(text), _SETEXT_TITLE.search(text)) if m]
    if not candidates:
        return None
    first = min(candidates, key=lambda m: m.start())
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", first.group(1)).strip() or None


def html_to_page(html: str, base_url: str) -> Page:
    """Main content of an HTML page as markdown (trafilatura), its title, and its links.

    A page that is (almost) only links — a site's navigation hub or a directory listing — has no main text:
    its markdown is "" and only its links are kept.
    """
    import trafilatura
    from lxml import html as lxml_html

    links: list[str] = []
    title: str | None = None
    text_len = link_len = 0
    try:
        tree = lxml_html.fromstring(html)
        for bad in tree.xpath("//script|//style|//noscript|//template"):
            bad.drop_tree()
        links = _absolute(base_url, [str(h) for h in tree.xpath("//a/@href")])
        title_el = tree.find(".//title")
        title = " ".join((title_el.text_content() if title_el is not None else "").split()) or None
        body = tree.find(".//body")
        text_len = len("".join((body if body is not None else tree).text_content().split()))
        link_len = sum(len("".join(a.text_content().split())) for a in tree.xpath("//a"))
    except (ValueError, TypeError, lxml_html.etree.ParserError):  # type: ignore[attr-defined]
        pass
    if text_len and link_len / text_len > 0.8:
        return Page("", title, links)
    markdown = (
        trafilatura.extract(
            html,
            url=base_url,
            output_format="markdown",
            include_formatting=True,
            include_links=False,
            include_images=False,
            include_tables=True,
            include_comments=False,
            favor_recall=True,
            with_metadata=False,
            deduplicate=False,
        )
        or ""
    )
    meta = trafilatura.extract_metadata(html)
    if meta is not None and meta.title:
        title = meta.title
    if markdown.strip() and title and not markdown.lstrip().startswith("#"):
        markdown = f"# {title}\n\n{markdown}"
    return Page(markdown.strip() + "\n" if markdown.strip() else "", title, links)


_SKIP_EXT = re.compile(
    r"\.(png|jpe?g|gif|svg|webp|ico|css|js|mjs|json|xml|zip|gz|tgz|tar|apkg|ipynb|py|java|go|mp4|mp3|woff2?|ttf|eot)$",
    re.I,
)


def _absolute(base: str, hrefs: list[str]) -> list[str]:
    out: list[str] = []
    for href in hrefs:
        href = href.strip()
        if not href or href.startswith(("#", "mailto:", "javascript:", "tel:", "data:")):
            continue
        url = urldefrag(urljoin(base, href))[0]
        if urlsplit(url).scheme in ("http", "https") and not _SKIP_EXT.search(urlsplit(url).path):
            out.append(url)
    return list(dict.fromkeys(out))
