"""The personas' recommended resources: which, where their copies live, and how they are fetched and kept
fresh.

The list: the Key Resources links of the personas (bundled and workspace; ``[resources] personas`` narrows
it), plus ``[resources] add``, minus ``drop``. A resource's copy is a folder ``.workos/resources/<slug>/`` of
markdown files, one per page, each with front matter ``url`` (what a citation links to), ``title``,
``resource``, ``fetched_at``, ``etag`` and ``last_modified``. kb indexes them like any workspace file
(``source_type = "resource"``).

Fetching a resource reads its first page (a GitHub repository: its README) and the pages it links to inside
the resource's URL (``max_depth``, ``max_pages``). ``[resources] mirror`` maps a URL to a local folder (read
as an import) or to an http(s) mirror with the same layout; ``kb resources import DIR --url URL`` stores a
local copy as that URL. Freshness: a copy younger than ``max_age_hours`` is not re-checked (unless named or
``force``); older pages are re-requested with If-None-Match / If-Modified-Since, and a 304, or identical
content, leaves the file untouched — so nothing is re-read or re-embedded. A failure keeps the last good copy;
one resource's failure never stops the others. Per-resource state (last check, outcome, page validators,
links) is kept in ``.workos/.kb/resources.json``; the copies' front matter is enough to rebuild it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ingest.crawl import CopyReport, CrawlLimits, ResourceCopy, atomic_write, iso_time, resource_slug
from ingest.fetch import Fetcher
from ingest.guard import FetchError, FetchPolicy
from ingest.layout import RESOURCES_DIR
from kb.errors import ConfigError, IndexLockedError, KbError
from kb.index.engine import IndexEngine
from kb.locks import Busy, file_lock
from kb.models import IndexReport, Progress, ResourceFetchReport, ResourceInfo, ResourceOutcome
from kb.personas import list_personas
from kb.settings import ResourcesSettings

log = logging.getLogger(__name__)

Index = Callable[[Progress | None], IndexReport]  # brings the index up to date (the facade's ``index``)


@dataclass
class Resource:
    """One entry of the workspace's resource list, and what kb.toml says about it."""

    url: str
    title: str
    origins: list[str] = field(default_factory=list)  # persona names, "kb.toml", "import"
    pinned: bool = False
    unavailable: str | None = None
    mirror: str | None = None  # local folder/file or http(s) base

    @property
    def slug(self) -> str:
        return resource_slug(self.url)


def _norm(url: str) -> str:
    return url.strip().rstrip("/")


def resource_list(engine: IndexEngine) -> list[Resource]:
    """The workspace's resources, in persona order, then ``add``, then imported ones."""
    cfg: ResourcesSettings = engine.settings.resources
    found: dict[str, Resource] = {}
    wanted = {p.lower() for p in cfg.personas} if cfg.personas is not None else None
    for persona in list_personas(engine.workspace.personas_dir):
        if wanted is not None and persona.name not in wanted:
            continue
        for item in persona.key_resources:
            res = found.setdefault(_norm(item.url), Resource(item.url, item.title))
            res.origins.append(persona.name)
    for url in cfg.add:
        found.setdefault(_norm(url), Resource(url, urlsplit(url).hostname or url)).origins.append("kb.toml")
    for url, entry in _load_state(engine).items():
        if entry.get("imported_from") and _norm(url) not in found:
            found[_norm(url)] = Resource(url, entry.get("title") or url, ["import"])
    for url in cfg.drop:
        found.pop(_norm(url), None)
    pins = {_norm(u) for u in cfg.pin}
    unavailable = {_norm(u): why for u, why in cfg.unavailable.items()}
    mirrors = {_norm(u): m for u, m in cfg.mirror.items()}
    for key, res in found.items():
        res.pinned = key in pins
        res.unavailable = unavailable.get(key)
        res.mirror = mirrors.get(key)
    return list(found.values())


# --- state ------------------------------------------------------------------------------------------------


def _state_path(engine: IndexEngine) -> Path:
    return engine.workspace.state_dir / "resources.json"


def _load_state(engine: IndexEngine) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_state_path(engine).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("resources", {}) if isinstance(data, dict) else {}


def _tmp_dir(engine: IndexEngine) -> Path:
    return engine.workspace.ensure_state_dir() / "tmp"


def _save_state(engine: IndexEngine, state: dict[str, dict[str, Any]]) -> None:
    text = json.dumps({"version": 1, "resources": state}, indent=1)
    atomic_write(_state_path(engine), text, _tmp_dir(engine))


def _copy(engine: IndexEngine, res: Resource) -> ResourceCopy:
    return ResourceCopy(engine.workspace.root, res.url, res.title, _tmp_dir(engine))


def _limits(cfg: ResourcesSettings) -> CrawlLimits:
    return CrawlLimits(max_pages=cfg.max_pages, max_depth=cfg.max_depth, max_bytes=cfg.max_bytes)


def _record(copy: CopyReport, outcome: ResourceOutcome) -> None:
    outcome.pages_written += copy.pages_written
    outcome.pages_unchanged += copy.pages_unchanged
    outcome.pages_failed.extend(copy.pages_failed)
    outcome.bytes_downloaded += copy.bytes_downloaded


@contextlib.contextmanager
def _lock(engine: IndexEngine) -> Iterator[None]:
    try:
        with file_lock(engine.workspace.ensure_state_dir() / "resources.lock", wait=False):
            yield
    except Busy:
        raise IndexLockedError(
            f"Another kb process is fetching resources of {engine.workspace.root}. Wait for it and try again."
        ) from None


# --- listing ----------------------------------------------------------------------------------------------


def list_resources(engine: IndexEngine) -> list[ResourceInfo]:
    state = _load_state(engine)
    counts: dict[str, int] = {}
    with contextlib.suppress(KbError):
        counts = engine.chunk_counts()
    max_age = engine.settings.resources.max_age_hours * 3600
    out = []
    for res in resource_list(engine):
        folder = engine.workspace.root / RESOURCES_DIR / res.slug
        files = sorted(folder.rglob("*.md")) if folder.is_dir() else []
        rels = [f.relative_to(engine.workspace.root).as_posix() for f in files]
        entry = state.get(res.url) or state.get(_norm(res.url)) or {}
        checked = entry.get("checked_at") or (max(f.stat().st_mtime for f in files) if files else None)
        reason: str | None
        if res.unavailable:
            status, reason = "unavailable", res.unavailable
        elif entry.get("status") in ("error", "unavailable"):
            status, reason = entry["status"], entry.get("reason")
            if files:
                status, reason = (
                    "error",
                    f"{reason}; kept the copy from {iso_time(entry.get('fetched_at') or checked)}",
                )
        elif files:
            stale = not res.pinned and checked is not None and time.time() - checked > max_age
            status, reason = ("stale" if stale else "fetched"), None
        else:
            status, reason = "missing", "not fetched yet: run kb resources fetch"
        out.append(
            ResourceInfo(
                url=res.url,
                title=res.title,
                status=status,
                reason=reason,
                fetched_at=iso_time(entry.get("fetched_at") or (checked if files else None)),
                bytes=sum(f.stat().st_size for f in files),
                chunks=sum(counts.get(r, 0) for r in rels),
                pages=len(files),
                path=f"{RESOURCES_DIR}/{res.slug}",
                origins=res.origins,
                pinned=res.pinned,
                source=res.mirror or entry.get("imported_from"),
            )
        )
    return out


# --- fetching ---------------------------------------------------------------------------------------------


def fetch_resources(
    engine: IndexEngine,
    urls: list[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
    *,
    index: Index,
) -> ResourceFetchReport:
    """Fetch the resources (all due ones, or ``urls``), then bring the index up to date."""
    started = time.perf_counter()
    progress = progress or (lambda stage, done, total: None)
    cfg: ResourcesSettings = engine.settings.resources
    known = resource_list(engine)
    chosen = known
    if urls:
        by_url = {_norm(r.url): r for r in known}
        unknown = [u for u in urls if _norm(u) not in by_url]
        if unknown:
            raise ConfigError(
                f"Not in the resource list: {', '.join(unknown)}. Add it under [resources] add = [...] in "
                "kb.toml, or import a local copy: kb resources import DIR --url URL. See: kb resources list"
            )
        chosen = [by_url[_norm(u)] for u in urls]
    policy = FetchPolicy(
        allow_hosts=tuple(cfg.allow_hosts),
        timeout=cfg.timeout_s,
        max_bytes=cfg.max_bytes,
        max_redirects=cfg.max_redirects,
    )
    report = ResourceFetchReport()
    with _lock(engine), Fetcher(policy) as fetcher:
        state = _load_state(engine)
        for n, res in enumerate(chosen, 1):
            progress("fetch", n - 1, len(chosen))
            entry = state.setdefault(res.url, {})
            outcome = _fetch_one(engine, res, entry, fetcher, force, explicit=bool(urls))
            report.resources.append(outcome)
            _save_state(engine, state)
        progress("fetch", len(chosen), len(chosen))
    report.index = index(progress)
    report.seconds = time.perf_counter() - started
    return report


def _fetch_one(
    engine: IndexEngine, res: Resource, entry: dict[str, Any], fetcher: Fetcher, force: bool, explicit: bool
) -> ResourceOutcome:
    cfg: ResourcesSettings = engine.settings.resources
    folder = engine.workspace.root / RESOURCES_DIR / res.slug
    if res.unavailable:
        entry.update(status="unavailable", reason=res.unavailable, checked_at=time.time())
        return ResourceOutcome(res.url, "unavailable", res.unavailable)
    has_copy = folder.is_dir() and any(folder.rglob("*.md"))
    if res.pinned and has_copy:
        return ResourceOutcome(res.url, "pinned", "pinned in kb.toml: the copy is kept as it is")
    fresh = time.time() - float(entry.get("checked_at") or 0) < cfg.max_age_hours * 3600
    if has_copy and fresh and entry.get("status") == "fetched" and not (force or explicit):
        return ResourceOutcome(
            res.url, "fresh", f"checked less than {cfg.max_age_hours:g} h ago (use --force)"
        )
    outcome = ResourceOutcome(res.url, "fetched")
    try:
        local = (
            engine.workspace.root / Path(res.mirror).expanduser()
            if res.mirror and "://" not in res.mirror
            else None
        )
        if local is None and not res.mirror and entry.get("imported_from"):
            local = Path(entry["imported_from"])
            if not local.exists():  # the imported folder is gone: keep the copy
                return ResourceOutcome(res.url, "pinned", f"imported from {local}, which no longer exists")
        copy = _copy(engine, res)
        if local is not None:
            done = copy.import_tree(local, _limits(cfg))
        else:
            done = copy.crawl(fetcher, entry.get("pages") or {}, _limits(cfg), force=force, mirror=res.mirror)
        entry["pages"] = done.pages
        _record(done, outcome)
    except (FetchError, KbError, OSError) as exc:
        kind = "unavailable" if getattr(exc, "unavailable", False) else "error"
        log.warning("resource %s: %s", res.url, exc)
        entry.update(status=kind, reason=str(exc), checked_at=time.time())
        return ResourceOutcome(res.url, kind, str(exc) + ("; the last good copy is kept" if has_copy else ""))
    except Exception as exc:  # one resource's defect never fails the whole fetch
        log.exception("resource %s failed", res.url)
        entry.update(status="error", reason=f"{type(exc).__name__}: {exc}", checked_at=time.time())
        return ResourceOutcome(res.url, "error", f"{type(exc).__name__}: {exc}")
    now = time.time()
    entry.update(status="fetched", reason=None, checked_at=now, title=res.title)
    if outcome.pages_written or not entry.get("fetched_at"):
        entry["fetched_at"] = now
    if not outcome.pages_written:
        outcome.status = "unchanged"
    return outcome


# --- local copies -----------------------------------------------------------------------------------------


def import_resource(
    engine: IndexEngine, directory: str | os.PathLike[str], url: str, *, index: Index
) -> ResourceFetchReport:
    """Store the local copy at ``directory`` (a folder or one file) as resource ``url``, then index it."""
    started = time.perf_counter()
    given = Path(directory).expanduser()
    src = given.resolve()
    if not src.exists():
        raise ConfigError(f"{src} does not exist. Give the folder (or file) holding the copy of {url}.")
    if given.is_symlink() and not src.is_dir():
        raise ConfigError(f"{given} is a symlink: import the file it points to ({src}) by its own name.")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigError(
            f"{url!r} is not an http(s) URL. Example: kb resources import ./12factor --url https://12factor.net/"
        )
    known = {_norm(r.url): r for r in resource_list(engine)}
    res = known.get(_norm(url)) or Resource(url, urlsplit(url).hostname or url, ["import"])
    report = ResourceFetchReport()
    with _lock(engine):
        state = _load_state(engine)
        entry = state.setdefault(res.url, {})
        outcome = ResourceOutcome(res.url, "fetched")
        try:
            done = _copy(engine, res).import_tree(src, _limits(engine.settings.resources))
        except (FetchError, OSError) as exc:
            reason = str(exc) if isinstance(exc, FetchError) else f"cannot read {src}: {exc.strerror or exc}"
            raise ConfigError(f"Cannot import {given} as {url}: {reason}.") from None
        entry["pages"] = done.pages
        _record(done, outcome)
        now = time.time()
        entry.update(
            status="fetched",
            reason=None,
            checked_at=now,
            fetched_at=now,
            imported_from=str(src),
            title=res.title,
        )
        _save_state(engine, state)
        report.resources.append(outcome)
    report.index = index(None)
    report.seconds = time.perf_counter() - started
    return report
