"""``kb resources list|fetch|import``: the personas' recommended resources (a thin client of
:class:`kb.KnowledgeBase`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from kb.cli.group import command_group
from kb.cli.options import JsonOpt, WorkspaceOpt, library, out, print_json, progress_bar
from kb.models import ResourceFetchReport

resources_app = command_group(
    "resources",
    "The personas' recommended resources: fetched into .workos/resources/, kept fresh, cited by URL.\n\n"
    "Examples:\n\n"
    "  kb resources list\n\n"
    "  kb resources fetch\n\n"
    "  kb resources import ./mirror/12factor --url https://12factor.net/",
)

_COLOURS = {
    "fetched": "green",
    "unchanged": "green",
    "fresh": "green",
    "pinned": "cyan",
    "stale": "yellow",
    "missing": "yellow",
    "unavailable": "magenta",
    "error": "red",
}


@resources_app.command("list")
def list_(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """List the resources (persona Key Resources + kb.toml [resources]) with status, age, size and chunks.

    Status: fetched, stale (older than max_age_hours), unavailable, error (the last fetch failed), missing.

    Example: kb resources list --json
    """
    items = library(workspace).resources()
    if json_out:
        return print_json({"resources": [r.to_dict() for r in items]})
    if not items:
        out.print("No resources: the personas list none and kb.toml [resources] adds none.")
    for r in items:
        colour = _COLOURS.get(r.status, "white")
        out.print(f"[{colour}]{r.status:<11}[/] {escape(r.url)}  [dim]{escape(r.title)}[/]")
        detail = f"{r.pages} pages, {r.bytes:,} bytes, {r.chunks} chunks" if r.pages else ""
        when = f"fetched {r.fetched_at}" if r.fetched_at else ""
        extra = " · ".join(x for x in (detail, when, r.reason or "") if x)
        if extra:
            out.print(f"            {escape(extra)}")


@resources_app.command()
def fetch(
    urls: Annotated[
        list[str] | None, typer.Argument(help="Only these resource URLs (default: all that are due).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-download even fresh copies, without conditional requests.")
    ] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download the resources that are due (missing, stale or failed), then index them.

    Unchanged pages (HTTP 304, or the same content) are not rewritten, so nothing is re-embedded. A failure
    keeps the last good copy and never stops the other resources.

    Example: kb resources fetch https://12factor.net/ --json
    """
    kb = library(workspace)
    with progress_bar(json_out) as progress:
        report = kb.fetch_resources(urls or None, force=force, progress=progress)
    _report(report, json_out)


@resources_app.command("import")
def import_(
    directory: Annotated[str, typer.Argument(help="Folder (or file) holding a local copy of the resource.")],
    url: Annotated[str, typer.Option("--url", help="The URL this copy stands for (what citations link to).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Store a local copy of a resource as URL (air-gapped use), then index it.

    Example: kb resources import ../shared/resources/twelve-factor --url https://12factor.net/
    """
    _report(library(workspace).import_resource(directory, url), json_out)


def _report(report: ResourceFetchReport, json_out: bool) -> None:
    """What ``kb resources fetch`` and ``import`` did: one line per resource, then the index summary."""
    if json_out:
        return print_json(report.to_dict())
    for o in report.resources:
        colour = _COLOURS.get(o.status, "white")
        pages = (
            f"{o.pages_written} written, {o.pages_unchanged} unchanged"
            if o.status in ("fetched", "unchanged")
            else ""
        )
        failed = f", {len(o.pages_failed)} pages failed" if o.pages_failed else ""
        tail = " · ".join(x for x in (pages + failed, o.reason or "") if x)
        out.print(f"[{colour}]{o.status:<11}[/] {escape(o.url)}" + (f"  {escape(tail)}" if tail else ""))
    if report.index is not None:
        ix = report.index
        out.print(
            f"Indexed: {ix.chunks_embedded} chunks embedded, {ix.chunks_total} in the index "
            f"({report.seconds:.1f} s)"
        )
