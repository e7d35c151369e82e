"""Bundled persona documents (markdown). Loaded by :mod:`kb.personas`."""
