"""What every kb command shares: its options, its two consoles, JSON output and the service it talks to.

Light on purpose (no index stack): ``kb --help`` and a ``kb search`` answered by a running ``kb watch`` import
this module and nothing heavy. :mod:`kb.api` is imported inside :func:`library`, only when a command needs it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from kb.api import KnowledgeBase
    from kb.cli.render import ProgressReporter
    from kb.service import Service

EXIT_ABSTAINED = 3  # kb ask found no answer in the sources

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

WorkspaceOpt = Annotated[
    str | None,
    typer.Option(
        "--workspace",
        "-w",
        help="Workspace folder (default: $KB_WORKSPACE, else the current folder or a parent).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="Retrieval: hybrid (default; BM25 + dense vectors), dense or bm25."),
]
TypeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type", "-t", help="Only sources of this type: context, prd, resource, other (repeatable)."
    ),
]
PathOpt = Annotated[
    list[str] | None,
    typer.Option("--path", help="Only sources whose workspace-relative path matches this glob (repeatable)."),
]


NoRefreshOpt = Annotated[
    bool,
    typer.Option(
        "--no-refresh",
        help="Do not re-index sources that changed since they were indexed; report them as stale instead.",
    ),
]


def library(workspace: str | None, **overrides: Any) -> KnowledgeBase:
    """The workspace's knowledge base in this process (imports the index stack); ``overrides``: settings."""
    from kb.api import KnowledgeBase

    return KnowledgeBase.open(workspace, **overrides)


ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="KB_SERVER",
        show_envvar=False,
        help="Ask the kb serve at this URL instead of a local workspace (or $KB_SERVER; token: "
        "$KB_SERVE_TOKEN).",
    ),
]


def serving(workspace: str | None, server: str | None = None, **overrides: Any) -> Service:
    """A remote ``kb serve`` when ``server`` (``--server``/``KB_SERVER``) names one (see
    :mod:`kb.serve.remote_http`); else the live ``kb watch``/``kb serve`` of the workspace when one runs (it
    owns the index: fresh results, no cold start, a thin import path; see :mod:`kb.serve.client`); else the
    library (with settings ``overrides``, e.g. ``refresh=False``)."""
    if server:
        from kb.serve.remote_http import HttpRemote

        return HttpRemote(server, os.environ.get("KB_SERVE_TOKEN") or None)
    from kb.serve.client import connect

    return connect(workspace) or library(workspace, **overrides)


def progress_bar(json_out: bool) -> ProgressReporter:
    """A progress bar on stderr when it is a terminal and the output is text."""
    from kb.cli.render import ProgressReporter

    return ProgressReporter(err, enabled=not json_out and err.is_terminal)


def print_json(data: Any) -> None:
    """One indented JSON document on stdout (what ``--json`` prints)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def print_json_line(data: Any) -> None:
    """One JSON object on one line, flushed (a stream of events, e.g. ``kb watch --json``)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()
