"""Fetching a web page safely, and turning it into markdown. Independent of kb (never imports it).

The fetcher is an SSRF surface: every request goes through the policy of :mod:`ingest.guard` (http(s) only,
every address public unless allowed, checked before connecting, on every redirect hop and at connect time),
with caps on redirects, bytes (streamed: the body stops at the cap) and time (per read and for the whole
response), and a content-type allow-list (HTML, markdown, plain text, PDF).

Every refusal and failure is a :class:`ingest.guard.FetchError` whose message says what happened;
``unavailable`` tells a resource that cannot be had (404, 410, 401/403, 451) from a transient failure.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import httpx

from ingest.guard import FetchError, FetchPolicy, GuardedTransport

_UNAVAILABLE_STATUS = {
    401: "needs a login",
    402: "behind a paywall",
    403: "access is forbidden",
    404: "not found",
    410: "gone",
    451: "unavailable for legal reasons",
}
_GITHUB_REPO = re.compile(r"^https?://(?:www\.)?github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


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
    """GET with the policy applied at every hop. ``transport`` may be injected (tests); it is used as
    given."""

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
    """Turn fetched bytes into markdown (HTML: main content only; PDF: through the PDF loader) and its
    links."""
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
    except (ValueError, TypeError, lxml_html.etree.ParserError):
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
