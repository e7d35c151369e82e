"""Turning files into chunks, and web pages into files. Independent of kb (never imports it).

* :mod:`ingest.layout`: the workspace layout (folders, default includes, ``source_type``), the one home of
  those names;
* :mod:`ingest.discovery` (which files are read, and why the others are not), :mod:`ingest.loaders` (file ->
  text with its lines), :mod:`ingest.chunking` (text -> chunks with exact line ranges);
* :mod:`ingest.guard` (the SSRF policy), :mod:`ingest.fetch` (a page, safely, as markdown) and
  :mod:`ingest.crawl` (a resource's copy on disk: crawled, or imported from a local folder).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.chunking import Chunk, chunk_document
    from ingest.discovery import Candidate, Skipped, discover, discover_paths, read_candidate
    from ingest.loaders import Document, LoadError, load_document

# Loaded on first use: importing ``ingest.layout`` (as the workspace code does) must not load the loaders.
_HOMES = {
    "Chunk": "ingest.chunking",
    "chunk_document": "ingest.chunking",
    "Candidate": "ingest.discovery",
    "Skipped": "ingest.discovery",
    "discover": "ingest.discovery",
    "discover_paths": "ingest.discovery",
    "read_candidate": "ingest.discovery",
    "Document": "ingest.loaders",
    "LoadError": "ingest.loaders",
    "load_document": "ingest.loaders",
}

__all__ = [
    "Candidate",
    "Chunk",
    "Document",
    "LoadError",
    "Skipped",
    "chunk_document",
    "discover",
    "discover_paths",
    "load_document",
    "read_candidate",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
