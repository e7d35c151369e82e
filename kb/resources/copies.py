"""A resource's copy on disk: crawling its pages, importing a local copy, and writing one markdown file per
page.

Used by :mod:`kb.resources.catalog` (which decides what is fetched, when, and records the outcome).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ingest.discovery import is_secret
from ingest.fetch import Fetcher, FetchError, FetchResult, github_raw_base, github_repo, to_page
from kb.index.engine import IndexEngine
from kb.models import ResourceOutcome
from kb.settings import ResourcesSettings

log = logging.getLogger(__name__)

RESOURCES_DIR = ".workos/resources"
_LOCAL_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".rst": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
_ROOT_DOCS = ("readme.md", "readme.markdown", "readme.rst", "readme.txt", "readme", "index.md", "index.html")


@dataclass
class Resource:
    url: str
    title: str
    origins: list[str] = field(default_factory=list)
    pinned: bool = False
    unavailable: str | None = None
    mirror: str | None = None  # local folder/file or http(s) base

    @property
    def slug(self) -> str:
        parts = urlsplit(self.url)
        raw = (
            re.sub(r"[^A-Za-z0-9._-]+", "-", f"{parts.hostname or 'local'}{parts.path}").strip("-.")
            or "resource"
        )
        return raw if len(raw) <= 80 else f"{raw[:70]}-{hashlib.sha1(self.url.encode()).hexdigest()[:8]}"


def scope_of(url: str) -> str:
    """The URL prefix a resource's pages live under: its folder (a file URL's parent, else the URL itself)."""
    head, _, last = url.partition("?")[0].rpartition("/")
    return f"{head}/" if "." in last and head.count("/") >= 2 else url.rstrip("/") + "/"


def _atomic_write(engine: IndexEngine, path: Path, text: str) -> None:
    tmp_dir = engine.workspace.ensure_state_dir() / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") if ts else None


def _crawl(
    engine: IndexEngine,
    res: Resource,
    entry: dict[str, Any],
    fetcher: Fetcher,
    force: bool,
    outcome: ResourceOutcome,
) -> None:
    cfg: ResourcesSettings = engine.settings.resources
    gh = github_repo(res.url)
    scope = (
        (res.mirror.rstrip("/") + "/") if res.mirror else (github_raw_base(*gh) if gh else scope_of(res.url))
    )
    starts = (
        [scope + name for name in ("README.md", "readme.md", "README.rst", "README")]
        if gh
        else [res.mirror or res.url]
    )
    old_pages: dict[str, dict[str, Any]] = entry.get("pages") or {}
    pages: dict[str, dict[str, Any]] = {}
    queue: deque[tuple[str, int]] = deque()
    seen: set[str] = set()

    def get(url: str) -> tuple[FetchResult, dict[str, Any] | None]:
        old = old_pages.get(url)
        usable = old and not force and (not old.get("path") or (engine.workspace.root / old["path"]).exists())
        cond = old if usable else None
        result = fetcher.get(
            url,
            etag=cond.get("etag") if cond else None,
            last_modified=cond.get("last_modified") if cond else None,
        )
        return result, old

    first_error: FetchError | None = None
    for start in starts:  # the first page decides the resource's fate: its failure keeps the old copy
        try:
            result, old = get(start)
        except FetchError as exc:
            first_error = first_error or exc
            if gh and exc.status == 404:
                continue
            raise
        _take(engine, res, scope, start, result, old, pages, outcome)
        queue.append((start, 0))
        seen.add(start)
        break
    else:
        raise first_error or FetchError(f"nothing to fetch at {res.url}")
    while queue:
        url, depth = queue.popleft()
        if depth >= cfg.max_depth:
            continue
        for link in pages[url].get("links", []):
            if link in seen or not link.startswith(scope) or len(seen) >= cfg.max_pages:
                continue
            if gh and not _repo_doc(link[len(scope) :]):
                continue
            seen.add(link)
            if (old_pages.get(link) or {}).get("unsupported") and not force:
                pages[link] = old_pages[link]  # known to be of a kind kb does not read: not asked again
                continue
            try:
                result, old = get(link)
            except FetchError as exc:
                if exc.unsupported:  # a linked file of a kind kb does not read: not a failure
                    log.debug("skipped %s: %s", link, exc)
                    pages[link] = {"unsupported": str(exc)}
                    continue
                outcome.pages_failed.append({"url": link, "reason": str(exc)})
                if old_pages.get(link) and not exc.unavailable:
                    pages[link] = old_pages[link]  # a failed re-fetch keeps the last good copy
                continue
            _take(engine, res, scope, link, result, old, pages, outcome)
            queue.append((link, depth + 1))
    _sweep(engine, res, {p["path"] for p in pages.values() if p.get("path")})
    entry["pages"] = pages


def _repo_doc(rel: str) -> bool:
    """In a GitHub repository, the README's links followed: markdown documents in sub-folders (not root files
    such as translations, CONTRIBUTING or LICENSE)."""
    return "/" in rel and rel.lower().endswith((".md", ".markdown"))


def _take(
    engine: IndexEngine,
    res: Resource,
    scope: str,
    url: str,
    result: FetchResult,
    old: dict[str, Any] | None,
    pages: dict[str, dict[str, Any]],
    outcome: ResourceOutcome,
) -> None:
    if result.not_modified and old is not None:
        pages[url] = old
        outcome.pages_unchanged += 1
        return
    outcome.bytes_downloaded += len(result.content)
    page = to_page(result)
    record: dict[str, Any] = {"links": page.links, "etag": result.etag, "last_modified": result.last_modified}
    if page.markdown.strip():
        rel = url[len(scope) :] if url.startswith(scope) else ""
        path = _page_path(res, rel)
        fm = {
            **page.metadata,
            "url": page_url(res, rel),
            "title": page.title or res.title,
            "resource": res.url,
            "fetched_at": _iso(time.time()),
            "etag": result.etag,
            "last_modified": result.last_modified,
        }
        if url != fm["url"]:
            fm["source"] = url
        if _write_page(engine, engine.workspace.root / path, fm, page.markdown):
            outcome.pages_written += 1
        else:
            outcome.pages_unchanged += 1
        record["path"] = path
    pages[url] = record


def page_url(res: Resource, rel: str) -> str:
    """The URL a citation of the page at ``rel`` (relative to the resource's folder or mirror) links to."""
    rel = rel.lstrip("/")
    gh = github_repo(res.url)
    if not rel or (rel.lower() in _ROOT_DOCS and "/" not in rel):
        return res.url
    if gh:
        return f"https://github.com/{gh[0]}/{gh[1]}/blob/HEAD/{rel}"
    return scope_of(res.url) + rel


def _page_path(res: Resource, rel: str) -> str:
    rel, _, query = rel.partition("?")
    segs = [re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "_" for s in rel.split("/")]
    segs = [s if s not in (".", "..") else "_" for s in segs]
    if not rel or rel.endswith("/"):
        segs[-1:] = [*([segs[-1]] if segs[-1] != "_" else []), "index"]
    name = re.sub(r"\.(html?|txt|rst|pdf|markdown)$", "", segs[-1], flags=re.I)
    name = name if name.lower().endswith(".md") else f"{name}.md"
    if query:
        name = f"{name[:-3]}-{hashlib.sha1(query.encode()).hexdigest()[:8]}.md"
    return "/".join([RESOURCES_DIR, res.slug, *segs[:-1], name])


def _write_page(engine: IndexEngine, path: Path, fm: dict[str, Any], body: str) -> bool:
    """Write the page unless its body and validators are unchanged (then the file, and its mtime, stay)."""
    import yaml

    from ingest.loaders import split_front_matter

    if path.exists():
        old = path.read_text(encoding="utf-8")
        meta, line, _ = split_front_matter(old)
        old_body = "\n".join(old.splitlines()[line - 1 :]).strip("\n") + "\n"
        same = all(str(meta.get(k)) == str(fm.get(k)) for k in ("url", "title", "etag", "last_modified"))
        if same and old_body == body.strip("\n") + "\n":
            return False
    clean = {k: v for k, v in fm.items() if v is not None}
    text = "---\n" + yaml.safe_dump(clean, sort_keys=False, allow_unicode=True, width=1000) + "---\n\n" + body
    _atomic_write(engine, path, text)
    return True


def _sweep(engine: IndexEngine, res: Resource, keep: set[str]) -> None:
    folder = engine.workspace.root / RESOURCES_DIR / res.slug
    if not folder.is_dir():
        return
    for f in folder.rglob("*.md"):
        if f.relative_to(engine.workspace.root).as_posix() not in keep:
            f.unlink()


def _import_tree(
    engine: IndexEngine, res: Resource, src: Path, entry: dict[str, Any], outcome: ResourceOutcome
) -> None:
    cfg: ResourcesSettings = engine.settings.resources
    if not src.exists():
        raise FetchError(f"the local copy {src} does not exist")
    files = (
        [src]
        if src.is_file()
        else sorted(
            p
            for p in src.rglob("*")
            if p.is_file()
            and not p.is_symlink()
            and p.suffix.lower() in _LOCAL_TYPES
            and not is_secret(p.name)
            and not any(part.startswith(".") for part in p.relative_to(src).parts)
        )
    )
    if not files:
        raise FetchError(f"no markdown, text, HTML or PDF files in {src}")
    keep: set[str] = set()
    for f in files:
        rel = f.name if src.is_file() else f.relative_to(src).as_posix()
        if f.stat().st_size > cfg.max_bytes:
            outcome.pages_failed.append({"url": rel, "reason": f"larger than max_bytes ({cfg.max_bytes:,})"})
            continue
        data = f.read_bytes()
        result = FetchResult(f.as_uri(), f.as_uri(), 200, data, _LOCAL_TYPES[f.suffix.lower()])
        try:
            page = to_page(result)
        except FetchError as exc:
            outcome.pages_failed.append({"url": rel, "reason": str(exc)})
            continue
        if not page.markdown.strip():
            continue
        path = _page_path(res, rel)
        fm = {
            **page.metadata,
            "url": page_url(res, rel),
            "title": page.title or res.title,
            "resource": res.url,
            "fetched_at": _iso(time.time()),
            "source": f"local copy: {rel}",
        }
        if _write_page(engine, engine.workspace.root / path, fm, page.markdown):
            outcome.pages_written += 1
        else:
            outcome.pages_unchanged += 1
        outcome.bytes_downloaded += len(data)
        keep.add(path)
    _sweep(engine, res, keep)
    entry["pages"] = {}
