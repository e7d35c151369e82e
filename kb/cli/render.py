"""Terminal rendering for the CLI (Rich). The library never prints; this module does."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from kb.models import Answer, Hit, IndexReport, Status, StoreStatus
from kb.prompts import DRAFT_HEADER, NEAREST_SOURCES, PERSONA_PICKED, REFRESHED_SOURCES, STALE_SOURCES

_STAGES = {"scan": "Reading files", "embed": "Embedding chunks", "write": "Writing index", "done": "Done"}


class ProgressReporter:
    """A progress callback (stage, done, total) drawn as a Rich progress bar on a terminal."""

    def __init__(self, console: Console, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled = enabled  # rich.progress is imported here: a client's start pays nothing for it
        self._progress = (
            Progress(
                TextColumn("{task.description:<18}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            if enabled
            else None
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressReporter:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self._progress or stage == "done":
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(_STAGES.get(stage, stage), total=total or 1)
        self._progress.update(self._tasks[stage], completed=done, total=total or 1)


class DraftPrinter:
    """An ``on_token`` callback: a language model's draft as it streams, made safe to show (no URLs, no
    escapes), on stderr under a dim header. :meth:`close` ends it (nothing when no token came)."""

    def __init__(self, err: Console):
        from kb.answer.grounding import StreamFilter  # here, not at the top: kb.answer imports numpy

        self.err = err
        self.filter = StreamFilter()

    def __call__(self, piece: str) -> None:
        if not self.filter.started:
            self.filter.started = True
            self.err.print(DRAFT_HEADER, style="dim")
        sys.stderr.write(self.filter.feed(piece))
        sys.stderr.flush()

    def close(self) -> None:
        if self.filter.started:
            sys.stderr.write(self.filter.close() + "\n\n")


def print_persona_picked(err: Console, a: Answer) -> None:
    """Which persona kb picked for the question (when it picked one), as a dim line on stderr."""
    if a.persona_picked and a.persona_title:
        err.print(PERSONA_PICKED.format(title=a.persona_title), style="dim")


def print_freshness(err: Console, stale: list[str], refreshed: list[str]) -> None:
    """On stderr: the sources re-indexed before answering (dim), and those left stale (a warning)."""
    if refreshed:
        paths = ", ".join(refreshed[:5]) + (f" and {len(refreshed) - 5} more" if len(refreshed) > 5 else "")
        err.print(escape(REFRESHED_SOURCES.format(n=len(refreshed), paths=paths)), style="dim")
    if stale:
        paths = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        err.print("[yellow]warning:[/] " + escape(STALE_SOURCES.format(n=len(stale), paths=paths)))


def print_index_report(out: Console, r: IndexReport) -> None:
    out.print(
        f"Indexed: {len(r.added)} added, {len(r.updated)} updated, {len(r.removed)} removed, "
        f"{len(r.renamed)} renamed, {r.unchanged} unchanged · {r.chunks_embedded} chunks embedded · "
        f"{r.chunks_total} chunks in the index · {r.seconds:.1f}s"
    )
    if r.rebuilt:
        out.print("The embedding model or chunking settings changed: the index was rebuilt.")
    for line in r.repaired:
        out.print(f"[yellow]repaired:[/] {escape(line)}")
    if r.redacted:
        files = len({x.path for x in r.redacted})
        shown = ", ".join(f"{x.path}:{x.line} {x.kind}" for x in r.redacted[:3])
        more = f" (+{len(r.redacted) - 3} more: kb index --json)" if len(r.redacted) > 3 else ""
        out.print(
            f"[yellow]Redacted {len(r.redacted)} secret(s)[/] in {files} file(s): {escape(shown)}{more}"
        )
    if r.skipped:
        out.print(f"Skipped {len(r.skipped)} file(s):")
        for s in r.skipped:
            out.print(f"  {escape(s.path)}: {escape(s.reason)}")


def print_hits(out: Console, hits: list[Hit]) -> None:
    if not hits:
        out.print("No results.")
    for h in hits:
        where = f"{h.path}:{h.start_line}-{h.end_line}"
        out.print(f"[bold]{h.rank}.[/] {escape(where)} [dim]› {escape(h.heading)}  ({h.score:.3f})[/]")
        if h.url:
            out.print(f"   {escape(h.url)}")
        snippet = " ".join(h.text.split())
        out.print("   " + escape(snippet[:240] + ("…" if len(snippet) > 240 else "")))


def print_answer(out: Console, a: Answer) -> None:
    if a.abstained:
        out.print(escape(a.answer))
        if a.nearest:
            out.print(NEAREST_SOURCES)
            for h in a.nearest:
                where = f"{escape(h.path)}:{h.start_line}-{h.end_line}"
                out.print(f"  - {where} › {escape(h.heading)} ({h.score:.2f})")
        return
    out.print(a.answer, markup=False)  # text from documents: "[secret: …]", "[link=…]" shown as they are
    out.print()
    out.print("[bold]Sources[/]")
    for c in a.citations:
        out.print(f"[{c.id}] {escape(c.location)}" + (f"  {escape(c.url)}" if c.url else ""))
        out.print(f'    "{escape(c.quote)}"', style="dim")


def print_status(out: Console, st: Status) -> None:
    when = (
        dt.datetime.fromtimestamp(st.last_indexed_at).isoformat(timespec="seconds")
        if st.last_indexed_at
        else "never"
    )
    out.print(f"workspace     {escape(st.workspace)}")
    out.print(f"index folder  {escape(st.index_dir)}")
    out.print(f"model         {escape(st.model)} ({st.embedder_runtime})")
    if st.store is not None:
        print_store(out, st.store)
    out.print(f"sources       {st.sources_count}   chunks {st.chunks_count}   last indexed {when}")
    for s in st.sources:
        out.print(f"  {escape(s.path):<60} {s.chunks:>4} chunks  {s.content_hash[:12]}")


def print_store(out: Console, store: StoreStatus) -> None:
    """``store  server http://chroma:8000 · collection kb_…`` (or the embedded folder)."""
    where = f"{store.kind} {store.location}"
    if store.tenant and (store.tenant, store.database) != ("default_tenant", "default_database"):
        where += f" ({store.tenant}/{store.database})"
    vectors = f" · {store.vectors} vectors" if store.vectors is not None else ""
    out.print(f"store         {escape(where)} · collection {escape(store.collection or '?')}{vectors}")
    others = [c for c in store.collections or [] if c != store.collection]
    if others:
        out.print(f"  older collections of this workspace: {escape(', '.join(others))}")
    if store.error:
        out.print(f"  [yellow]store error[/]  {escape(store.error)}")


def print_eval(out: Console, reports: list[Any]) -> None:
    r0 = reports[0]
    out.print(
        f"{escape(r0.dataset)} ({r0.split}): {r0.queries} queries, {r0.documents} documents, "
        f"{r0.chunks} chunks"
    )
    out.print(f"{'mode':<8} {'nDCG@10':>8} {'Recall@100':>11} {'MRR@10':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for r in reports:
        out.print(
            f"{r.mode:<8} {r.ndcg_at_10:>8.4f} {r.recall_at_100:>11.4f} {r.mrr_at_10:>8.4f} "
            f"{r.latency_ms_p50:>8.1f} {r.latency_ms_p95:>8.1f}"
        )


def print_questions_eval(out: Console, r: Any) -> None:
    for q in r.results:
        mark = f"#{q.rank}" if q.rank else "missed"
        out.print(f"{mark:>7}  {escape(q.question)}")
    out.print(
        f"{r.questions} questions ({r.mode}): hit@1 {r.hit_at_1:.2f}  hit@{r.k} {r.hit_at_k:.2f}  "
        f"MRR {r.mrr:.3f}  p50 {r.latency_ms_p50:.1f} ms"
    )


def print_answers_eval(out: Console, r: Any) -> None:
    """``kb eval --answers``: one line per question, then the metrics of each split."""
    for q in r.results:
        marks = []
        if q.leads is not None:
            marks.append("lead" if q.leads else "NO-LEAD")
        if q.flags_no_team is not None:
            marks.append("flagged" if q.flags_no_team else "NOT-FLAGGED")
        facts = f"facts {len(q.facts_found)}/{len(q.facts_found) + len(q.facts_missed)}"
        out.print(
            f"{q.split:<6} {' '.join(marks):<12} {facts:<10} {q.sentences:>2} sent.  {escape(q.question)}"
        )
    out.print(
        f"{'split':<7} {'n':>3} {'leads':>6} {'flags':>6} {'prec.':>6} {'facts':>6} {'frag.':>5} "
        f"{'supp.':>6} "
        f"{'med.sent':>8} {'hit@k':>6} {'MRR':>6}"
    )

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for name, s in r.splits.items():
        out.print(
            f"{name:<7} {s.questions:>3} {f(s.leads_with_team_context):>6} {f(s.flags_no_team_context):>6} "
            f"{s.sentence_precision:>6.2f} {s.key_fact_recall:>6.2f} {s.fragments:>5} {s.supported:>6.2f} "
            f"{s.sentences_median:>8.1f} {f(s.retrieval_hit_at_k):>6} {f(s.retrieval_mrr):>6}"
        )
