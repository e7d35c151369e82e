"""Turning files into chunks: discovery, loaders and chunking. Independent of kb (never imports it)."""

from ingest.chunking import Chunk, chunk_document
from ingest.discovery import Candidate, Skipped, discover, read_candidate
from ingest.loaders import Document, LoadError, load_document

__all__ = [
    "Candidate",
    "Chunk",
    "Document",
    "LoadError",
    "Skipped",
    "chunk_document",
    "discover",
    "load_document",
    "read_candidate",
]
