"""``kb serve``: watch the workspace and serve it over HTTP (JSON API, web page, MCP); see
:mod:`kb.serve.http`."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from kb.cli.options import WorkspaceOpt, library

if TYPE_CHECKING:
    from kb.models import ResourceInfo
    from kb.serve.refresh import ResourceRefresher

T = TypeVar("T")


def _one_at_a_time(fn: Callable[..., T]) -> Callable[..., T]:
    lock = threading.Lock()

    def call(*args: Any, **kwargs: Any) -> T:
        with lock:
            return fn(*args, **kwargs)

    return call


def serve(
    workspace: WorkspaceOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback needs a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free one).")] = 8765,
    token_file: Annotated[
        str | None,
        typer.Option("--token-file", help="File holding the token clients must send (else $KB_SERVE_TOKEN)."),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option("--allow-host", help="Also answer to this Host name, e.g. behind a proxy (repeatable)."),
    ] = None,
    rate_limit: Annotated[
        float, typer.Option("--rate-limit", min=0, help="Requests per second per client (0: no limit).")
    ] = 20.0,
    resources: Annotated[
        bool,
        typer.Option(
            "--resources/--no-resources", help="Re-check stale recommended resources in the background."
        ),
    ] = True,
    debounce: Annotated[
        float, typer.Option(min=0.0, max=60.0, help="Seconds of quiet before changes are indexed.")
    ] = 0.1,
    poll: Annotated[bool, typer.Option("--poll", help="Poll instead of inotify.")] = False,
) -> None:
    """Serve the workspace over HTTP while keeping its index fresh: a JSON API under /v1/, a web page at /
    and MCP at /mcp, until Ctrl-C. kb search/ask/status from other terminals keep working (routed to it).

    Binds 127.0.0.1 unless --host says otherwise; any other address needs a token (KB_SERVE_TOKEN or
    --token-file), which clients send as Authorization: Bearer. Clients elsewhere: KB_SERVER=URL kb ask ...

    Example: kb serve --workspace ./acme --port 8765
    """
    from kb.cli.watch_render import log_to_stderr
    from kb.serve.http import ServeOptions, check_token, read_token
    from kb.serve.http import serve as run

    log_to_stderr()
    env_token = os.environ.get("KB_SERVE_TOKEN")
    token = read_token(token_file) if token_file else (check_token(env_token) if env_token else None)
    kb = library(workspace)
    listing, refresher = resource_refresher(workspace)
    options = ServeOptions(
        host=host,
        port=port,
        token=token,
        allow_hosts=tuple(allow_host or ()),
        rate=rate_limit,
        burst=max(1, int(rate_limit * 2)),
        watch={"debounce": debounce, "polling": poll},
    )
    run(kb.engine, kb.query, options, resources=listing, refresher=refresher if resources else None)


def resource_refresher(workspace: str | None) -> tuple[Callable[[], list[ResourceInfo]], ResourceRefresher]:
    """The resource listing and a (not yet started) :class:`ResourceRefresher` for ``kb serve`` and ``kb
    watch``, on a knowledge base of their own (its own manifest connection; its ``index`` goes to the
    watcher over its socket), one call at a time."""
    from kb.serve.refresh import ResourceRefresher

    side = library(workspace)
    listing = _one_at_a_time(side.resources)
    return listing, ResourceRefresher(listing, _one_at_a_time(lambda urls: side.fetch_resources(urls)))
