"""A resource's copy on disk: crawling its pages, importing a local copy, and writing one markdown file per
page.

A copy lives in ``<root>/.workos/resources/<slug>/``. Each page is a markdown file with front matter ``url``
(what a citation links to), ``title``, ``resource``, ``fetched_at``, ``etag`` and ``last_modified``. A page
whose body and validators are unchanged is not rewritten (its file and mtime stay). Files are written through
a temp folder and renamed into place, so a reader never sees half a page.

Everything here takes plain values (the workspace root, the resource's URL and title, :class:`CrawlLimits`, a
temp folder); which resources are fetched, and when, is decided by the caller (kb's resource catalog).
Independent of kb (never imports it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ingest.discovery import is_secret
from ingest.fetch import Fetcher, FetchResult, Page, github_raw_base, github_repo, to_page
from ingest.guard import FetchError
from ingest.layout import README_NAMES, RESOURCES_DIR, ROOT_DOC_NAMES

log = logging.getLogger(__name__)

LOCAL_TYPES = {  # what an import reads from a local copy, and as which content type
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".rst": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}

Pages = dict[str, dict[str, Any]]  # page URL -> {"path", "links", "etag", "last_modified"} or {"unsupported"}


def check_local_file(path: Path) -> None:
    """FetchError unless ``path`` is a regular file of a type kb imports whose name is not a secret's."""
    name = path.name
    if is_secret(name):
        raise FetchError(f"{name} looks like a secret (credentials or key file): not imported")
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror}") from None
    if not regular:
        raise FetchError(f"{path} is not a regular file (a device, pipe or socket)")
    if path.suffix.lower() not in LOCAL_TYPES:
        raise FetchError(
            f"{name} is of a type kb does not import ({path.suffix or 'no extension'}); "
            f"import {', '.join(LOCAL_TYPES)} files, or a folder of them"
        )


@dataclass(frozen=True)
class CrawlLimits:
    max_pages: int = 200  # pages fetched per resource (links within its URL)
    max_depth: int = 1  # link depth followed from the resource's first page
    max_bytes: int = 5_000_000  # the largest local file imported (fetched pages: the fetcher's own cap)


@dataclass
class CopyReport:
    """What one crawl or import did to a copy. ``pages`` is the state of the next conditional crawl."""

    pages: Pages = field(default_factory=dict)
    pages_written: int = 0
    pages_unchanged: int = 0
    pages_failed: list[dict[str, str]] = field(default_factory=list)  # [{"url", "reason"}]
    bytes_downloaded: int = 0


def resource_slug(url: str) -> str:
    """The folder name of a resource's copy: host and path, made safe (a long one is shortened, with a
    hash)."""
    parts = urlsplit(url)
    raw = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{parts.hostname or 'local'}{parts.path}").strip("-.")
    raw = raw or "resource"
    return raw if len(raw) <= 80 else f"{raw[:70]}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def scope_of(url: str) -> str:
    """The URL prefix a resource's pages live under: its folder (a file URL's parent, else the URL itself)."""
    head, _, last = url.partition("?")[0].rpartition("/")
    return f"{head}/" if "." in last and head.count("/") >= 2 else url.rstrip("/") + "/"


def page_url(url: str, rel: str) -> str:
    """The URL a citation of the page at ``rel`` (relative to the resource's folder or mirror) links to."""
    rel = rel.lstrip("/")
    gh = github_repo(url)
    if not rel or (rel.lower() in ROOT_DOC_NAMES and "/" not in rel):
        return url
    if gh:
        return f"https://github.com/{gh[0]}/{gh[1]}/blob/HEAD/{rel}"
    return scope_of(url) + rel


def iso_time(ts: float | None) -> str | None:
    """A timestamp as the copies' front matter writes it (UTC, seconds); None for no time."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") if ts else None


def atomic_write(path: Path, text: str, tmp_dir: Path) -> None:
    """Write ``text`` to ``tmp_dir`` (same file system), then rename it onto ``path``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)


def _repo_doc(rel: str) -> bool:
    """In a GitHub repository, the README's links followed: markdown documents in sub-folders (not root files
    such as translations, CONTRIBUTING or LICENSE)."""
    return "/" in rel and rel.lower().endswith((".md", ".markdown"))


@dataclass(frozen=True)
class ResourceCopy:
    """The copy of the resource ``url`` in the workspace at ``root``; temp files go to ``tmp_dir``."""

    root: Path
    url: str
    title: str
    tmp_dir: Path

    @property
    def slug(self) -> str:
        return resource_slug(self.url)

    @property
    def folder(self) -> Path:
        return self.root / RESOURCES_DIR / self.slug

    # --- crawling -----------------------------------------------------------------------------------------
    def crawl(
        self,
        fetcher: Fetcher,
        old_pages: Pages,
        limits: CrawlLimits,
        *,
        force: bool = False,
        mirror: str | None = None,
    ) -> CopyReport:
        """Fetch the first page (a GitHub repository: its README), then the pages it links to inside the
        resource's URL (``limits``), each conditionally (``old_pages``' validators) unless ``force``.

        The first page's failure raises :class:`FetchError` (the old copy is kept); a later page's failure is
        reported in ``pages_failed`` and keeps that page's last good copy. ``mirror`` (an http(s) base) is
        fetched in place of the resource's URL.
        """
        report = CopyReport()
        gh = github_repo(self.url)
        scope = (mirror.rstrip("/") + "/") if mirror else (github_raw_base(*gh) if gh else scope_of(self.url))
        starts = [scope + name for name in README_NAMES] if gh else [mirror or self.url]
        pages = report.pages
        queue: deque[tuple[str, int]] = deque()
        seen: set[str] = set()

        def get(url: str) -> tuple[FetchResult, dict[str, Any] | None]:
            old = old_pages.get(url)
            usable = old and not force and (not old.get("path") or (self.root / old["path"]).exists())
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
            self._take(scope, start, result, old, report)
            queue.append((start, 0))
            seen.add(start)
            break
        else:
            raise first_error or FetchError(f"nothing to fetch at {self.url}")
        while queue:
            url, depth = queue.popleft()
            if depth >= limits.max_depth:
                continue
            for link in pages[url].get("links", []):
                if link in seen or not link.startswith(scope) or len(seen) >= limits.max_pages:
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
                    report.pages_failed.append({"url": link, "reason": str(exc)})
                    if old_pages.get(link) and not exc.unavailable:
                        pages[link] = old_pages[link]  # a failed re-fetch keeps the last good copy
                    continue
                self._take(scope, link, result, old, report)
                queue.append((link, depth + 1))
        self._sweep({p["path"] for p in pages.values() if p.get("path")})
        return report

    def _take(
        self, scope: str, url: str, result: FetchResult, old: dict[str, Any] | None, report: CopyReport
    ) -> None:
        if result.not_modified and old is not None:
            report.pages[url] = old
            report.pages_unchanged += 1
            return
        report.bytes_downloaded += len(result.content)
        page = to_page(result)
        record: dict[str, Any] = {
            "links": page.links,
            "etag": result.etag,
            "last_modified": result.last_modified,
        }
        if page.markdown.strip():
            rel = url[len(scope) :] if url.startswith(scope) else ""
            more = {"etag": result.etag, "last_modified": result.last_modified}
            if url != page_url(self.url, rel):
                more["source"] = url
            record["path"] = self._store(page, rel, report, **more)
        report.pages[url] = record

    # --- importing ----------------------------------------------------------------------------------------
    def import_tree(self, src: Path, limits: CrawlLimits) -> CopyReport:
        """Store the local copy at ``src`` (a folder of markdown, text, HTML or PDF files, or one file).
        FetchError, before anything is read, for a file kb does not import (its type, a secret's name, a
        device or pipe) and for a folder holding no file to import."""
        if not src.exists():
            raise FetchError(f"the local copy {src} does not exist")
        if not src.is_dir():
            check_local_file(src)
        files = (
            [src]
            if src.is_file()
            else sorted(
                p
                for p in src.rglob("*")
                if p.is_file()
                and not p.is_symlink()
                and p.suffix.lower() in LOCAL_TYPES
                and not is_secret(p.name)
                and not any(part.startswith(".") for part in p.relative_to(src).parts)
            )
        )
        if not files:
            raise FetchError(f"no markdown, text, HTML or PDF files in {src}")
        report = CopyReport()
        keep: set[str] = set()
        for f in files:
            rel = f.name if src.is_file() else f.relative_to(src).as_posix()
            if f.stat().st_size > limits.max_bytes:
                reason = f"larger than max_bytes ({limits.max_bytes:,})"
                report.pages_failed.append({"url": rel, "reason": reason})
                continue
            data = f.read_bytes()
            result = FetchResult(f.as_uri(), f.as_uri(), 200, data, LOCAL_TYPES[f.suffix.lower()])
            try:
                page = to_page(result)
            except FetchError as exc:
                report.pages_failed.append({"url": rel, "reason": str(exc)})
                continue
            if not page.markdown.strip():
                continue
            keep.add(self._store(page, rel, report, source=f"local copy: {rel}"))
            report.bytes_downloaded += len(data)
        self._sweep(keep)
        return report

    # --- files --------------------------------------------------------------------------------------------
    def page_path(self, rel: str) -> str:
        """The workspace-relative file of the page at ``rel`` (relative to the resource's folder)."""
        rel, _, query = rel.partition("?")
        segs = [re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "_" for s in rel.split("/")]
        segs = [s if s not in (".", "..") else "_" for s in segs]
        if not rel or rel.endswith("/"):
            segs[-1:] = [*([segs[-1]] if segs[-1] != "_" else []), "index"]
        name = re.sub(r"\.(html?|txt|rst|pdf|markdown)$", "", segs[-1], flags=re.I)
        name = name if name.lower().endswith(".md") else f"{name}.md"
        if query:
            name = f"{name[:-3]}-{hashlib.sha1(query.encode()).hexdigest()[:8]}.md"
        return "/".join([RESOURCES_DIR, self.slug, *segs[:-1], name])

    def _store(self, page: Page, rel: str, report: CopyReport, **more: str | None) -> str:
        """Write ``page`` (at ``rel`` in the resource) with its front matter, ``more`` last; count it as
        written or unchanged; return its workspace-relative path."""
        path = self.page_path(rel)
        fm = {
            **page.metadata,
            "url": page_url(self.url, rel),
            "title": page.title or self.title,
            "resource": self.url,
            "fetched_at": iso_time(time.time()),
            **more,
        }
        if self._write_page(self.root / path, fm, page.markdown):
            report.pages_written += 1
        else:
            report.pages_unchanged += 1
        return path

    def _write_page(self, path: Path, fm: dict[str, Any], body: str) -> bool:
        """Write the page unless its body and validators are unchanged (then the file, and its mtime,
        stay)."""
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
        head = yaml.safe_dump(clean, sort_keys=False, allow_unicode=True, width=1000)
        text = "---\n" + head + "---\n\n" + body
        atomic_write(path, text, self.tmp_dir)
        return True

    def _sweep(self, keep: set[str]) -> None:
        """Delete the copy's page files that are no longer pages of the resource."""
        if not self.folder.is_dir():
            return
        for f in self.folder.rglob("*.md"):
            if f.relative_to(self.root).as_posix() not in keep:
                f.unlink()
