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
ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="Retrieval: hybrid (default; BM25 + dense vectors), dense or bm25."),
]
TypeOpt = Annotated[
    list[str] | None,
    typer.Option("--type", "-t", help="Only sources of this type: context, prd, resource, other (repeatable)."),
]
PathOpt = Annotated[
    list[str] | None,
    typer.Option("--path", help="Only sources whose workspace-relative path matches this glob (repeatable)."),
]


def _fail(exc: KbError) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(exc.exit_code)


def _open(workspace: str | None, **overrides: Any) -> Any:
    from kb.api import KnowledgeBase

    return KnowledgeBase.open(workspace, **overrides)


def _serving(workspace: str | None) -> Any:
    """The live `kb watch` of the workspace when one runs (it owns the index: fresh results, no cold start; a thin
    import path, see kb/remote.py), else the library."""
    from kb.serve.client import connect

    return connect(workspace) or _open(workspace)


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
    from kb.cli.render import ProgressReporter, print_index_report

    try:
        kb = _serving(workspace)
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
    mode: ModeOpt = None,
    source_type: TypeOpt = None,
    path: PathOpt = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the chunks most relevant to QUERY, with file and line range.

    Example: kb search "notification retention" -k 5

    Example: kb search "rate limits" --type prd --path 'projects/prds/notif*' --mode bm25
    """
    from kb.cli.render import print_hits

    try:
        hits = _serving(workspace).search(query, k=k, mode=mode, source_type=source_type, path=path)
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
    llm: Annotated[str | None, typer.Option("--llm", help="Answer backend: extractive (default), "
                                            "openai-compatible[:MODEL], llama-cpp:FILE.gguf.")] = None,
    mode: ModeOpt = None,
    source_type: TypeOpt = None,
    path: PathOpt = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer QUESTION from the workspace, citing file and lines for every sentence.

    When the sources do not answer it, kb says so, lists the nearest sources and exits with code 3.
    Without --persona, kb picks the persona that fits the question (kb.toml `persona` fixes one).
    With --llm a language model writes the answer (its draft streams to stderr); kb then checks every
    sentence against the source it cites and removes what the source does not support.

    Example: kb ask "How should we paginate the notifications API?" --persona backend-engineer

    Example: KB_LLM_BASE_URL=http://127.0.0.1:8080/v1 kb ask "Who owns notifications?" --llm openai-compatible
    """
    from kb.answer.grounding import StreamFilter
    from kb.cli.render import print_answer
    from kb.prompts import DRAFT_HEADER, PERSONA_PICKED

    draft = StreamFilter()

    def show(piece: str) -> None:  # the model's draft, made safe to show (no URLs, no escapes), on stderr
        if not draft.started:
            draft.started = True
            err.print(DRAFT_HEADER, style="dim")
        sys.stderr.write(draft.feed(piece))
        sys.stderr.flush()

    try:
        kb = _serving(workspace)
        stream = {"on_token": show} if not json_out and kb.streams_tokens else {}  # not through kb watch
        answer = kb.ask(question, persona=persona or "auto", k=k, llm=llm, mode=mode, source_type=source_type,
                        path=path, **stream)
    except KbError as exc:
        _fail(exc)
    if draft.started:
        sys.stderr.write(draft.close() + "\n\n")
    if answer.persona_picked and answer.persona_title and not json_out:
        err.print(PERSONA_PICKED.format(title=answer.persona_title), style="dim")
    if json_out:
        _json(answer.to_dict())
    else:
        print_answer(out, answer)
    if answer.abstained:
        raise typer.Exit(EXIT_ABSTAINED)


@app.command("eval")
def eval_(
    dataset: Annotated[str, typer.Argument(help="A BEIR dataset folder, or a JSONL file of your own questions.")],
    split: Annotated[str, typer.Option("--split", help="BEIR qrels split to score.")] = "test",
    mode: Annotated[list[str] | None, typer.Option("--mode", help="hybrid, dense or bm25 (repeatable).")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Questions file: hits to look at.")] = 5,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="BEIR: score only the first N queries.")] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure retrieval: nDCG@10, Recall@100, MRR@10 and latency on a BEIR dataset (indexed once into a cache),
    or hit@1, hit@k and MRR of the workspace on a JSONL of {"question", "expected": ["path#heading", ...]}.

    Example: kb eval ../shared/bench/scifact --split train --mode hybrid --mode bm25

    Example: kb eval benchmarks/questions/sample-workspace.jsonl --workspace data
    """
    from pathlib import Path

    from kb.cli.render import ProgressReporter, print_eval, print_questions_eval

    modes = tuple(mode or ["hybrid"])
    try:
        if Path(dataset).is_file():
            if len(modes) > 1:
                raise KbError("A questions file is scored in one --mode at a time.")
            report = _open(workspace).evaluate(dataset, k=k, mode=modes[0])
            return _json(report.to_dict()) if json_out else print_questions_eval(out, report)
        from kb.evaluate import evaluate_beir

        with ProgressReporter(err, enabled=not json_out and err.is_terminal) as progress:
            reports = evaluate_beir(dataset, split=split, modes=modes, progress=progress, limit=limit)
    except KbError as exc:
        _fail(exc)
    if json_out:
        return _json(reports[0].to_dict() if len(reports) == 1 else {"results": [r.to_dict() for r in reports]})
    print_eval(out, reports)


@app.command()
def status(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Show the workspace, index folder, model, counts, last index time and every indexed source.

    Example: kb status --json
    """
    from kb.cli.render import print_status

    try:
        st = _serving(workspace).status()
    except KbError as exc:
        _fail(exc)
    if json_out:
        return _json(st.to_dict())
    print_status(out, st)
    if st.watcher is not None:
        from kb.cli.watch_render import print_watcher

        print_watcher(out, st.watcher)


@app.command()
def watch(
    workspace: WorkspaceOpt = None,
    debounce: Annotated[float, typer.Option(min=0.0, max=60.0, help="Seconds of quiet before changes are indexed.")] = 0.1,
    poll: Annotated[bool, typer.Option("--poll", help="Poll instead of inotify (e.g. network filesystems).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per re-index on stdout.")] = False,
) -> None:
    """Keep the index equal to the files until Ctrl-C: what changes is re-indexed as it changes.

    While it runs, kb search, ask, status and index from other terminals are answered by it (fresh, no cold start).
    One log line per re-index on stderr: paths, action, chunks embedded, milliseconds.

    Example: kb watch --workspace ./acme
    """
    from kb.cli.watch_render import log_to_stderr

    log_to_stderr()
    emit = (lambda r: _json_line(r.__dict__)) if json_out else None
    try:
        _open(workspace).watch(debounce=debounce, polling=poll, on_reindex=emit)
    except KbError as exc:
        _fail(exc)


def _json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


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


from kb.cli.resources import resources_app  # noqa: E402 - needs the helpers above

app.add_typer(resources_app, name="resources")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
