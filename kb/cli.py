"""The ``kb`` command line: a thin client of :class:`kb.KnowledgeBase`.

Exit codes: 0 success; 1 error (a clear message on stderr); 2 usage error; 3 no answer (``kb ask`` abstained);
4 the index is locked by another kb process.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from kb.errors import KbError

EXIT_ABSTAINED = 3

app = typer.Typer(
    name="kb",
    help=(
        "kb: grounded, cited answers from your team's workspace, offline.\n\n"
        "Examples:\n\n"
        "  kb init ./acme\n\n"
        "  kb index --workspace ./acme\n\n"
        "  kb ask \"How should we paginate the notifications API?\" --persona backend-engineer\n\n"
        "Exit codes: 0 ok · 1 error · 2 usage error · 3 no answer found (kb ask abstained) · "
        "4 index locked by another kb process."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

WorkspaceOpt = Annotated[
    str | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: $KB_WORKSPACE, else the current folder or a parent)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def _fail(exc: KbError) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(exc.exit_code)


def _open(workspace: str | None, **overrides: Any) -> Any:
    from kb.api import KnowledgeBase

    return KnowledgeBase.open(workspace, **overrides)


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@app.command()
def init(
    path: Annotated[str, typer.Argument(help="Folder to make a workspace (created if missing).")] = ".",
    json_out: JsonOpt = False,
) -> None:
    """Create a workspace: .workos/context/, .workos/personas/, projects/prds/ and a commented kb.toml.

    Example: kb init ./acme
    """
    from kb.workspace import init_workspace

    try:
        ws, created = init_workspace(path)
    except KbError as exc:
        _fail(exc)
    if json_out:
        return _json({"workspace": str(ws.root), "created": created})
    out.print(f"Workspace ready at {ws.root}" + (f" (created {', '.join(created)})" if created else " (already set up)"))
    out.print("Next: put markdown in .workos/context/ and projects/prds/, then run: kb index")


@app.command()
def index(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Index the workspace (incremental: only what changed is re-read and re-embedded).

    Example: kb index --workspace ./acme --json
    """
    from kb.render import ProgressReporter, print_index_report

    try:
        kb = _open(workspace)
        with ProgressReporter(err, enabled=not json_out and err.is_terminal) as progress:
            report = kb.index(progress=progress)
    except KbError as exc:
        _fail(exc)
    if json_out:
        return _json(report.to_dict())
    print_index_report(out, report)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Number of hits.")] = 10,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the chunks most relevant to QUERY, with file and line range.

    Example: kb search "notification retention" -k 5
    """
    from kb.render import print_hits

    try:
        hits = _open(workspace).search(query, k=k)
    except KbError as exc:
        _fail(exc)
    if json_out:
        return _json({"query": query, "hits": [h.to_dict() for h in hits]})
    print_hits(out, hits)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="Your question.")],
    persona: Annotated[str | None, typer.Option("--persona", "-p", help="Answer as this persona (see: kb personas).")] = None,
    k: Annotated[int | None, typer.Option("-k", min=1, max=50, help="Chunks to draw on (default: top_k).")] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer QUESTION from the workspace, citing file and lines for every sentence.

    When the sources do not answer it, kb says so, lists the nearest sources and exits with code 3.

    Example: kb ask "How should we paginate the notifications API?" --persona backend-engineer
    """
    from kb.render import print_answer

    try:
        answer = _open(workspace).ask(question, persona=persona, k=k)
    except KbError as exc:
        _fail(exc)
    if json_out:
        _json(answer.to_dict())
    else:
        print_answer(out, answer)
    if answer.abstained:
        raise typer.Exit(EXIT_ABSTAINED)


@app.command()
def status(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Show the workspace, index folder, model, counts, last index time and every indexed source.

    Example: kb status --json
    """
    from kb.render import print_status

    try:
        st = _open(workspace).status()
    except KbError as exc:
        _fail(exc)
    if json_out:
        return _json(st.to_dict())
    print_status(out, st)


@app.command()
def personas(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """List the personas: bundled ones and the workspace's .workos/personas/*.md (which override them).

    Example: kb personas --json
    """
    try:
        items = _open(workspace).personas()
    except KbError as exc:
        _fail(exc)
    if json_out:
        return _json({"personas": [p.to_dict() for p in items]})
    for p in items:
        out.print(f"{p.name:<22} {p.origin:<10} {escape(p.title)} — {escape(p.domain)}")


@app.command()
def config(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Print the effective settings (flags > KB_* environment > kb.toml > defaults).

    Example: kb config --json
    """
    try:
        kb = _open(workspace)
    except KbError as exc:
        _fail(exc)
    data = json.loads(kb.settings.model_dump_json())
    if json_out:
        return _json({"workspace": str(kb.workspace.root), "settings": data})
    out.print(f"# workspace: {kb.workspace.root}")
    for key, value in data.items():
        out.print(f"{key} = {json.dumps(value)}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
