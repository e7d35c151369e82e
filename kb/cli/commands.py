"""The ``kb`` app and its commands: each parses its flags, calls one :class:`kb.service.Service` (or
:class:`kb.KnowledgeBase`) method and renders the result (:mod:`kb.cli.render`). Errors are reported in one
place, :class:`kb.cli.group.KbGroup`; heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kb.cli import doctor_command, mcp_command, serve_command
from kb.cli.group import EXIT_INTERRUPTED, command_group
from kb.cli.options import (
    EXIT_ABSTAINED,
    JsonOpt,
    ModeOpt,
    NoRefreshOpt,
    PathOpt,
    ServerOpt,
    TypeOpt,
    WorkspaceOpt,
    err,
    library,
    out,
    print_json,
    print_json_line,
    progress_bar,
    serving,
)
from kb.cli.resources import resources_app
from kb.errors import KbError

app = command_group(
    "kb",
    "kb: grounded, cited answers from your team's workspace, offline.\n\n"
    "Examples:\n\n"
    "  kb init ./acme\n\n"
    "  kb index --workspace ./acme\n\n"
    '  kb ask "How should we paginate the notifications API?" --persona backend-engineer\n\n'
    "Exit codes: 0 ok · 1 error · 2 usage error · 3 no answer found (kb ask abstained) · "
    "4 index locked by another kb process.",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
def init(
    path: Annotated[str, typer.Argument(help="Folder to make a workspace (created if missing).")] = ".",
    json_out: JsonOpt = False,
) -> None:
    """Create a workspace: .workos/context/, .workos/personas/, projects/prds/ and a commented kb.toml.

    Example: kb init ./acme
    """
    from kb.workspace import init_workspace

    ws, created = init_workspace(path)
    if json_out:
        return print_json({"workspace": str(ws.root), "created": created})
    done = f" (created {', '.join(created)})" if created else " (already set up)"
    out.print(f"Workspace ready at {ws.root}{done}")
    out.print("Next: put markdown in .workos/context/ and projects/prds/, then run: kb index")


@app.command()
def index(
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild", help="Re-read and re-embed everything (the embedding server changed its model)."
        ),
    ] = False,
) -> None:
    """Index the workspace (incremental: only what changed is re-read and re-embedded).

    Example: kb index --workspace ./acme --json
    """
    from kb.cli.render import print_index_report

    kb = serving(workspace, server)
    with progress_bar(json_out) as progress:
        report = kb.index(progress=progress, rebuild=rebuild)
    if json_out:
        return print_json(report.to_dict())
    print_index_report(out, report)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Number of hits.")] = 10,
    mode: ModeOpt = None,
    source_type: TypeOpt = None,
    path: PathOpt = None,
    no_refresh: NoRefreshOpt = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Show the chunks most relevant to QUERY, with file and line range.

    Sources that changed since they were indexed are re-indexed first (unless --no-refresh, which reports them
    as stale).

    Example: kb search "notification retention" -k 5

    Example: kb search "rate limits" --type prd --path 'projects/prds/notif*' --mode bm25
    """
    from kb.cli.render import print_freshness, print_hits

    svc = serving(workspace, server, **({"refresh": False} if no_refresh else {}))
    hits = svc.search(query, k=k, mode=mode, source_type=source_type, path=path)
    stale, refreshed = list(getattr(hits, "stale", [])), list(getattr(hits, "refreshed", []))
    print_freshness(err, stale, refreshed)
    if json_out:
        data = {"query": query, "hits": [h.to_dict() for h in hits], "stale": stale, "refreshed": refreshed}
        return print_json(data)
    print_hits(out, hits)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="Your question.")],
    persona: Annotated[
        str | None, typer.Option("--persona", "-p", help="Answer as this persona (see: kb personas).")
    ] = None,
    k: Annotated[
        int | None, typer.Option("-k", min=1, max=50, help="Chunks to draw on (default: top_k).")
    ] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            "--llm",
            help="Answer backend: extractive (default), openai-compatible[:MODEL], llama-cpp:FILE.gguf.",
        ),
    ] = None,
    mode: ModeOpt = None,
    source_type: TypeOpt = None,
    path: PathOpt = None,
    no_refresh: NoRefreshOpt = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Answer QUESTION from the workspace, citing file and lines for every sentence.

    When the sources do not answer it, kb says so, lists the nearest sources and exits with code 3.
    Without --persona, kb picks the persona that fits the question (kb.toml `persona` fixes one).
    With --llm a language model writes the answer (its draft streams to stderr); kb then checks every
    sentence against the source it cites and removes what the source does not support. Sources that changed
    since they were indexed are re-indexed first; with --no-refresh they are reported as stale, and a quote no
    longer at its lines is never shown.

    Example: kb ask "How should we paginate the notifications API?" --persona backend-engineer

    Example: KB_LLM_BASE_URL=http://127.0.0.1:8080/v1 kb ask "Who owns notifications?" --llm openai-compatible
    """
    from kb.cli.render import DraftPrinter, print_answer, print_freshness, print_persona_picked

    kb, draft = serving(workspace, server, **({"refresh": False} if no_refresh else {})), DraftPrinter(err)
    stream = draft if not json_out and kb.streams_tokens else None  # (not through kb watch)
    answer = kb.ask(
        question,
        persona=persona or "auto",
        k=k,
        llm=llm,
        mode=mode,
        source_type=source_type,
        path=path,
        on_token=stream,
    )
    draft.close()
    print_freshness(err, answer.stale, answer.refreshed)
    if json_out:
        print_json(answer.to_dict())
    else:
        print_persona_picked(err, answer)
        print_answer(out, answer)
    if answer.abstained:
        raise typer.Exit(EXIT_ABSTAINED)


@app.command("eval")
def eval_(
    dataset: Annotated[
        str | None, typer.Argument(help="A BEIR dataset folder, or a JSONL file of your own questions.")
    ] = None,
    answers: Annotated[
        str | None,
        typer.Option(
            "--answers", help="A labelled answer set (JSONL): score kb ask's answers, not only retrieval."
        ),
    ] = None,
    llm: Annotated[
        str | None, typer.Option("--llm", help="--answers: the answer backend (default: the llm setting).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="BEIR qrels split to score.")] = "test",
    mode: Annotated[
        list[str] | None, typer.Option("--mode", help="hybrid, dense or bm25 (repeatable).")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Questions file: hits to look at.")] = 5,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="BEIR: score only the first N queries.")
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure retrieval: nDCG@10, Recall@100, MRR@10 and latency on a BEIR dataset (indexed once into a
    cache), or hit@1, hit@k and MRR of the workspace on a JSONL of
    {"question", "expected": ["path#heading", ...]}. With --answers, score the answers themselves on a
    labelled set: leads with team context, sentence precision, key-fact recall, fragments, supported, length.

    Example: kb eval ../shared/bench/scifact --split train --mode hybrid --mode bm25

    Example: kb eval benchmarks/questions/sample-workspace.jsonl --workspace data

    Example: kb eval --answers benchmarks/questions/answers.jsonl --workspace ./acme
    """
    from kb.cli.render import print_eval

    if answers is not None:
        if dataset is not None:
            raise KbError("Give either a dataset or --answers FILE, not both.")
        return _eval_answers(answers, k, llm, workspace, json_out)
    if dataset is None:
        raise KbError(
            "Name what to evaluate: kb eval DATASET_DIR, kb eval QUESTIONS.jsonl or kb eval --answers FILE."
        )
    modes = tuple(mode or ["hybrid"])
    if Path(dataset).is_file():
        return _eval_questions(dataset, modes, k, workspace, json_out)
    from kb.evaluate import evaluate_beir

    with progress_bar(json_out) as progress:
        reports = evaluate_beir(dataset, split=split, modes=modes, progress=progress, limit=limit)
    if json_out:
        data = reports[0].to_dict() if len(reports) == 1 else {"results": [r.to_dict() for r in reports]}
        return print_json(data)
    print_eval(out, reports)


def _eval_questions(
    questions: str, modes: tuple[str, ...], k: int, workspace: str | None, json_out: bool
) -> None:
    """``kb eval QUESTIONS.jsonl``: hit@1, hit@k and MRR of the workspace's search in one mode."""
    from kb.cli.render import print_questions_eval

    if len(modes) > 1:
        raise KbError("A questions file is scored in one --mode at a time.")
    report = library(workspace).evaluate(questions, k=k, mode=modes[0])
    if json_out:
        return print_json(report.to_dict())
    print_questions_eval(out, report)


def _eval_answers(answers: str, k: int, llm: str | None, workspace: str | None, json_out: bool) -> None:
    """``kb eval --answers FILE``: the answers of ``kb ask`` scored against a labelled set."""
    from kb.cli.render import print_answers_eval

    report = library(workspace).evaluate_answers(answers, k=max(k, 8), llm=llm)
    if json_out:
        return print_json(report.to_dict())
    print_answers_eval(out, report)


@app.command()
def status(workspace: WorkspaceOpt = None, json_out: JsonOpt = False, server: ServerOpt = None) -> None:
    """Show the workspace, index folder, model, counts, last index time and every indexed source.

    Example: kb status --json
    """
    from kb.cli.render import print_status
    from kb.cli.watch_render import print_watcher

    st = serving(workspace, server).status()
    if json_out:
        return print_json(st.to_dict())
    print_status(out, st)
    if st.watcher is not None:
        print_watcher(out, st.watcher)


@app.command()
def watch(
    workspace: WorkspaceOpt = None,
    debounce: Annotated[
        float, typer.Option(min=0.0, max=60.0, help="Seconds of quiet before changes are indexed.")
    ] = 0.1,
    poll: Annotated[
        bool, typer.Option("--poll", help="Poll instead of inotify (e.g. network filesystems).")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per re-index on stdout.")
    ] = False,
    resources: Annotated[
        bool, typer.Option("--resources/--no-resources", help="Re-check stale recommended resources.")
    ] = True,
) -> None:
    """Keep the index equal to the files until Ctrl-C: what changes is re-indexed as it changes.

    While it runs, kb search, ask, status and index from other terminals are answered by it (fresh, no cold
    start). One log line per re-index on stderr: paths, action, chunks embedded, milliseconds. Recommended
    resources older than max_age_hours are re-checked in the background (--no-resources: not).

    Example: kb watch --workspace ./acme
    """
    from kb.cli.watch_render import log_to_stderr

    log_to_stderr()
    emit = (lambda r: print_json_line(r.__dict__)) if json_out else None
    refresher = serve_command.resource_refresher(workspace)[1].start() if resources else None
    try:
        library(workspace).watch(debounce=debounce, polling=poll, on_reindex=emit)
    finally:
        if refresher is not None:
            refresher.stop()


@app.command()
def personas(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """List the personas: bundled ones and the workspace's .workos/personas/*.md (which override them).

    Example: kb personas --json
    """
    items = library(workspace).personas()
    if json_out:
        return print_json({"personas": [p.to_dict() for p in items]})
    for p in items:
        out.print(f"{p.name:<22} {p.origin:<10} {escape(p.title)} — {escape(p.domain)}")


@app.command()
def config(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Print the effective settings (flags > KB_* environment > kb.toml > defaults).

    Example: kb config --json
    """
    kb = library(workspace)
    data = json.loads(kb.settings.model_dump_json())
    if json_out:
        return print_json({"workspace": str(kb.workspace.root), "settings": data})
    out.print(f"# workspace: {kb.workspace.root}")
    for key, value in data.items():
        out.print(f"{key} = {json.dumps(value)}")


app.add_typer(resources_app, name="resources")
app.command("doctor")(doctor_command.doctor)
app.command("mcp")(mcp_command.mcp)
app.command("serve")(serve_command.serve)


def main() -> None:
    """The ``kb`` console script."""
    try:
        app()
    except KeyboardInterrupt:  # before a command runs (a command's interrupt is KbGroup's)
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
