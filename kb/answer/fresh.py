"""Quotes checked against the files as they are now: a source that changed on disk since it was indexed
(and was not re-indexed: ``kb ask --no-refresh``, or another process holding the write lock) may no longer
hold a sentence at the lines the index recorded. :class:`CurrentLines` reads such a file once per answer,
the way the indexer read it, and says whether a quote is still at its lines; both answerers ask it before they
show a quote (:attr:`kb.answer.evidence.Evidence.still_there`), so a quote that moved or changed is never
shown as supported.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from ingest.discovery import SUPPORTED_SUFFIXES
from ingest.loaders import LoadError, load_document

_LINES = re.compile(r"\r\n|\n|\r")


class CurrentLines:
    """``(path, start, end, quote) -> bool``: is ``quote`` at lines ``start``-``end`` of the file now?

    Paths not in ``stale`` are answered True without reading anything (their file is the one indexed: same
    size and mtime). A stale file that is gone, unreadable or past ``max_bytes`` holds nothing.
    """

    def __init__(self, root: Path, stale: Collection[str], max_bytes: int):
        self.root = root
        self.stale = set(stale)
        self.max_bytes = max_bytes
        self._lines: dict[str, list[str] | None] = {}

    def lines(self, path: str) -> list[str] | None:
        if path not in self._lines:
            self._lines[path] = self._read(path)
        return self._lines[path]

    def _read(self, path: str) -> list[str] | None:
        file = self.root / path
        kind = SUPPORTED_SUFFIXES.get(file.suffix.lower())
        try:
            real = file.resolve(strict=True)
            if (
                kind is None
                or not real.is_relative_to(self.root.resolve())
                or real.stat().st_size > self.max_bytes
            ):
                return None
            return _LINES.split(load_document(file.read_bytes(), kind).text)
        except (OSError, RuntimeError, LoadError, ValueError):
            return None

    def __call__(self, path: str, start: int, end: int, quote: str) -> bool:
        if path not in self.stale:
            return True
        lines = self.lines(path)
        if lines is None or start < 1 or end > len(lines):
            return False
        window = " ".join(" ".join(lines[start - 1 : end]).split())
        return " ".join(quote.split()) in window
