"""``kb mcp``: the workspace as a Model Context Protocol server on stdio, for AI agents (see
:mod:`kb.serve.mcp` and, for freshness, :mod:`kb.serve.mcp_owner`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kb.cli.options import WorkspaceOpt, library

if TYPE_CHECKING:
    from kb.answer.query import Query
    from kb.index.engine import IndexEngine


def mcp(
    workspace: WorkspaceOpt = None,
    debounce: Annotated[
        float, typer.Option(min=0.0, max=60.0, help="Seconds of quiet before changes are indexed.")
    ] = 0.1,
    poll: Annotated[bool, typer.Option("--poll", help="Poll instead of inotify.")] = False,
) -> None:
    """Serve the workspace to AI agents (Claude Code, Cursor, ...) over MCP on stdin/stdout until stdin
    closes: tools search, ask, read_source, status and personas; personas as prompts; sources as kb://
    resources. An agent launches it itself (see README, Agents); logs go to stderr, never stdout.

    Fresh: when kb watch or kb serve owns the workspace, kb mcp is its client; otherwise it watches the
    workspace itself while it runs (other kb commands then route to it).

    Example: kb mcp --workspace ./acme
    """
    from kb.cli.watch_render import log_to_stderr
    from kb.serve.mcp_owner import OwnedIndex
    from kb.workspace import find_workspace

    log_to_stderr()
    ws = find_workspace(workspace)

    def open_index() -> tuple[IndexEngine, Query]:
        kb = library(str(ws.root))
        return kb.engine, kb.query

    owned = OwnedIndex(ws, open_index, debounce=debounce, polling=poll)
    owned.start(fork=True)  # before the MCP SDK's import (and any thread): the two start-ups overlap

    import anyio

    from kb.serve.mcp import build_mcp, run_stdio

    @contextlib.asynccontextmanager
    async def lifespan(server: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(owned.stop)

    def on_signal(signum: int, frame: Any) -> None:
        # The protocol's stdin reader is a thread blocked in read(): an interrupted event loop would wait for
        # stdin to close. Stop the watcher (its run in progress finishes: the index stays whole), then leave.
        owned.stop()
        logging.getLogger("kb").info("kb mcp stopped (%s)", signal.Signals(signum).name)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    run_stdio(build_mcp(lambda: owned, ws, lifespan=lifespan))
