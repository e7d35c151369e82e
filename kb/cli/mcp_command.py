"""``kb mcp``: the workspace as a Model Context Protocol server on stdio, for AI agents (see
:mod:`kb.serve.mcp` and, for freshness, :mod:`kb.serve.mcp_owner`)."""

from __future__ import annotations

import logging
import os
import signal
from typing import Annotated, Any

import typer

from kb.cli.options import WorkspaceOpt


def mcp(
    workspace: WorkspaceOpt = None,
    debounce: Annotated[
        float, typer.Option(min=0.0, max=60.0, help="Seconds of quiet before changes are indexed.")
    ] = 0.1,
    poll: Annotated[bool, typer.Option("--poll", help="Poll instead of inotify.")] = False,
    resources: Annotated[
        bool, typer.Option("--resources/--no-resources", help="Re-check stale recommended resources.")
    ] = True,
) -> None:
    """Serve the workspace to AI agents (Claude Code, Cursor, ...) over MCP on stdin/stdout until stdin
    closes: tools search, ask, read_source, status and personas; personas as prompts; sources as kb://
    resources. An agent launches it itself (see README, Agents); logs go to stderr, never stdout.

    Fresh: when kb watch or kb serve owns the workspace, kb mcp is its client; otherwise it runs a kb watch of
    its own while it runs (other kb commands route to it; the options above are that watcher's).

    Example: kb mcp --workspace ./acme
    """
    from kb.cli.watch_render import log_to_stderr
    from kb.serve.mcp_owner import OwnedIndex, watch_command
    from kb.workspace import find_workspace

    log_to_stderr()
    ws = find_workspace(workspace)
    owned = OwnedIndex(ws, watch_command(ws, debounce=debounce, polling=poll, resources=resources))
    owned.start()  # first: the watcher opens the index while this process loads the MCP SDK

    def on_signal(signum: int, frame: Any) -> None:
        # The protocol's stdin reader is a thread blocked in read(): an interrupted event loop would wait for
        # stdin to close. Stop the watcher (its run in progress finishes: the index stays whole), then leave.
        owned.stop()
        logging.getLogger("kb").info("kb mcp stopped (%s)", signal.Signals(signum).name)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        from kb.serve.mcp import build_mcp, run_stdio

        run_stdio(build_mcp(lambda: owned, ws))
    finally:
        owned.stop()
