"""Keeping the recommended resources fresh in the background, for ``kb serve`` and ``kb watch``.

A :class:`ResourceRefresher` thread looks, every ``every`` seconds, for resources whose copy is older than
their ``max_age_hours`` (status ``stale``) and re-checks just those through the given ``fetch`` (the facade's
:meth:`kb.KnowledgeBase.fetch_resources`: conditional requests, a 304 or identical content changes nothing,
a failure keeps the last good copy). Resources never fetched are left to ``kb resources fetch``: a server
does not start downloading on its own what nobody asked for.

It never blocks a query: fetching runs on this thread, and the re-index of what changed is done by the owner
of the index (the watcher picks up the written files, and ``fetch`` ends with an index run routed to it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from kb.models import ResourceInfo

log = logging.getLogger(__name__)

EVERY = 600.0  # seconds between two looks at the resources' freshness


class ResourceRefresher:
    """A daemon thread: ``fetch(due_urls)`` whenever ``listing()`` shows stale resources."""

    def __init__(
        self,
        listing: Callable[[], list[ResourceInfo]],
        fetch: Callable[[Sequence[str]], Any],
        *,
        every: float = EVERY,
        first_after: float = 5.0,
    ):
        self.listing, self.fetch = listing, fetch
        self.every, self.first_after = every, first_after
        self.checks = 0
        self.refreshed: list[str] = []
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self) -> list[str]:
        return [r.url for r in self.listing() if r.status == "stale"]

    def check(self) -> list[str]:
        """One look: re-check the stale resources; the URLs re-checked."""
        self.checks += 1
        try:
            urls = self.due()
            if urls:
                log.info("re-checking %d stale resource(s): %s", len(urls), ", ".join(urls))
                self.fetch(urls)
                self.refreshed.extend(urls)
            self.last_error = None
            return urls
        except Exception as exc:  # a failure is logged and retried at the next look; serving goes on
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("resource refresh failed: %s", self.last_error)
            return []

    def start(self) -> ResourceRefresher:
        self._thread = threading.Thread(target=self._run, name="kb-resource-refresh", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.first_after
        while not self._stop.wait(wait):
            self.check()
            wait = self.every

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
