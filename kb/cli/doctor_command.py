"""``kb doctor``: the index checked against the files and itself; what is wrong, and the fix."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from kb.cli.options import JsonOpt, WorkspaceOpt, library, out, print_json

_MARKS = {"ok": "[green]ok[/]      ", "repaired": "[yellow]repaired[/]", "problem": "[red]problem[/] "}


def doctor(
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what can be fixed without re-embedding.")
    ] = False,
    remove_damaged: Annotated[
        bool,
        typer.Option("--remove-damaged", help="With --repair: delete damaged vector indexes kb set aside."),
    ] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the index: manifest, vector index (chunk ids, counts), BM25 tables, settings fingerprint,
    damaged folders set aside, the kb watch socket, files changed since the last index. Prints what is wrong
    and the fix; exits 1 while a problem remains.

    Example: kb doctor --repair
    """
    with library(workspace) as kb:
        report = kb.doctor(repair=repair, remove_damaged=remove_damaged)
    if json_out:
        print_json(report.to_dict())
    else:
        for c in report.checks:
            mark = _MARKS["ok" if c.ok else "repaired" if c.repaired else "problem"]
            out.print(f"{mark} {c.name:<12} {escape(c.message)}")
            if not c.ok and not c.repaired and c.fix:
                out.print(f"{'':21}fix: {escape(c.fix)}")
        problems = len(report.problems)
        out.print("No problems found." if not problems else f"{problems} problem(s) remain.")
    if report.problems:
        raise typer.Exit(1)
