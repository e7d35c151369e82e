"""The ``kb`` command line: a thin client of :class:`kb.service.Service` (the library, or a running
``kb watch``).

Modules: :mod:`kb.cli.commands` (the ``kb`` app and its commands), :mod:`kb.cli.resources` (``kb resources``),
:mod:`kb.cli.options` (shared options, consoles, JSON output, opening the service), :mod:`kb.cli.group` (the
one error handler), :mod:`kb.cli.render` and :mod:`kb.cli.watch_render` (terminal output).

Exit codes: 0 success; 1 error (a clear message on stderr); 2 usage error; 3 no answer (``kb ask`` abstained);
4 the index is locked by another kb process; 130 interrupted.
"""

from __future__ import annotations

from kb.cli.commands import app, main

__all__ = ["app", "main"]
