"""ingest's exceptions."""

from __future__ import annotations


class LoadError(Exception):
    """The file cannot be turned into text; the message is the reason shown to the user."""
