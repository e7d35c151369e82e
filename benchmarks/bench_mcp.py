#!/usr/bin/env python
"""kb mcp benchmark: an agent-style session through the official MCP SDK client over stdio.

In ONE run, on a temporary copy of the sample workspace ``data/`` (indexed first with ``kb index``):

* **start to first answer**, ``--starts`` times: launch ``kb mcp --workspace WS`` (nobody else owns the index,
  so kb mcp opens it and watches it itself, as for an agent launching it at the start of a session) with
  ``mcp.Client(StdioServerParameters(...))``; initialise, list the tools, call ``ask``; the time is from
  launching the process to the answer. Interleaved with as many runs of ``python -c "import
  sentence_transformers"`` (the cold start kb avoids), so that both see the same machine load. Bound:
  median first answer <= 0.3 x median import;
* **the session**, in the last start: after the first answer, ``--searches`` ``search`` calls and ``--asks``
  ``ask`` calls (questions of ``benchmarks/questions/sample-workspace.jsonl``): p50 / p95 per call, as the
  agent sees it (client to kb mcp over stdio, kb mcp to its watcher over the Unix socket, and back); every
  ask's citations are checked against the files (``kb.testing.verify_citation``);
* for information, start to first answer when a ``kb watch`` already owns the workspace (kb mcp is its
  client).

Usage:  python benchmarks/bench_mcp.py [--starts 3] [--searches 20] [--asks 5] [--model-cache DIR] [--keep]

Prints a markdown table on stdout, progress on stderr, writes benchmarks/results/bench_mcp.json. Exits 0 when
the benchmark ran (a failed bound is printed as FAIL), non-zero on errors."""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from common import (
    PROJECT,
    child_env,
    logger,
    machine,
    offline,
    print_table,
    read_jsonl,
    scratch,
    source_digest,
    verdict,
    versions,
    write_results,
)
from mcp import Client, StdioServerParameters

from kb.serve.client import connect
from kb.testing import kb_command, kb_watch, run_kb, verify_citation, wait_for

QUESTIONS = PROJECT / "benchmarks" / "questions" / "sample-workspace.jsonl"
FIRST_QUESTION = "How should we paginate the notifications API?"
BOUND = 0.3
say = logger()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def import_st() -> tuple[float, float]:
    """Wall and CPU seconds of ``python -c "import sentence_transformers"``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sentence_transformers"], check=True, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def children(pid: int | str) -> list[str]:
    return " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children")).split()


def cpu(pid: str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kb_mcp_cpu() -> float:
    """CPU seconds used so far by the ``kb mcp`` child of this process and its own children (its forked
    watcher), all threads."""
    for pid in children(os.getpid()):
        with contextlib.suppress(OSError):
            if b"\0mcp\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return cpu(pid) + sum(cpu(kid) for kid in children(pid))
    raise RuntimeError("kb mcp is not a child of this process")


def params(ws: Path, env: dict[str, str]) -> StdioServerParameters:
    cmd = kb_command("mcp", "--workspace", ws)
    return StdioServerParameters(command=cmd[0], args=cmd[1:], env=env)


async def agent(
    ws: Path, env: dict[str, str], queries: list[str], questions: list[str], log: Path
) -> dict[str, Any]:
    """One agent session: launch, initialise, list tools, first ask; then the searches and asks."""
    from mcp import stdio_client

    out: dict[str, Any] = {"search_ms": [], "ask_ms": [], "citations": 0, "citations_ok": 0}
    started = time.perf_counter()
    with log.open("a") as errlog:
        async with Client(stdio_client(params(ws, env), errlog=errlog)) as client:
            out["initialize_s"] = time.perf_counter() - started
            tools = await client.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            first = await client.call_tool("ask", {"question": FIRST_QUESTION})
            out["first_answer_s"] = time.perf_counter() - started
            out["first_answer_cpu_s"] = kb_mcp_cpu()
            if first.is_error or not first.structured_content or first.structured_content["abstained"]:
                raise RuntimeError(f"the first ask failed: {first.content}")
            for q in queries:
                t = time.perf_counter()
                r = await client.call_tool("search", {"query": q, "k": 10})
                out["search_ms"].append((time.perf_counter() - t) * 1000)
                if r.is_error or not r.structured_content:
                    raise RuntimeError(f"search {q!r} failed: {r.content}")
            for q in questions:
                t = time.perf_counter()
                r = await client.call_tool("ask", {"question": q})
                out["ask_ms"].append((time.perf_counter() - t) * 1000)
                if r.is_error or not r.structured_content:
                    raise RuntimeError(f"ask {q!r} failed: {r.content}")
                for c in r.structured_content["citations"]:
                    out["citations"] += 1
                    out["citations_ok"] += verify_citation(
                        ws, c["path"], c["start_line"], c["end_line"], c["quote"]
                    )
    out["session_s"] = time.perf_counter() - started
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--starts", type=int, default=3, help="kb mcp cold starts (and sentence-transformers imports)"
    )
    ap.add_argument("--searches", type=int, default=20)
    ap.add_argument("--asks", type=int, default=5)
    ap.add_argument("--model-cache", type=Path, help="reuse this model cache (the ONNX export) across runs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    offline(drop_kb_settings=True, log=say)
    questions = [q["question"] for q in read_jsonl(QUESTIONS)]
    queries = (questions * 2)[: args.searches]
    asks = questions[-args.asks :] if args.asks else []
    load_start = os.getloadavg()
    digest = source_digest()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with scratch("kb-bench-mcp-", args.keep, say) as tmp:
        model_cache = args.model_cache or tmp / "model-cache"
        env = child_env(model_cache)
        os.environ.update(KB_MODEL_CACHE_DIR=str(model_cache))
        ws = tmp / "ws"
        shutil.copytree(PROJECT / "data", ws, ignore=shutil.ignore_patterns(".kb"))
        say(f"indexing {ws}" + ("" if args.model_cache else " (the one-time ONNX export included)"))
        r = run_kb("index", "--workspace", ws, "--json", env=env, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"kb index failed: {r.stderr}")
        log = tmp / "kb-mcp.log"
        imports: list[float] = []
        import_cpu: list[float] = []
        sessions: list[dict[str, Any]] = []
        for i in range(args.starts):
            say(f"run {i + 1}/{args.starts}: import sentence_transformers")
            wall, cpu = import_st()
            imports.append(wall)
            import_cpu.append(cpu)
            say(f"run {i + 1}/{args.starts}: kb mcp cold start (import took {imports[-1]:.1f} s)")
            last = i == args.starts - 1
            sessions.append(anyio.run(agent, ws, env, queries if last else [], asks if last else [], log))
            say(f"  first answer after {sessions[-1]['first_answer_s']:.2f} s")
            wait_for(lambda: connect(ws) is None, 60)  # its watcher stopped with it
        say("kb mcp as the client of a running kb watch")
        watch = kb_watch(ws, tmp / "kb-watch.log")
        try:
            as_client = anyio.run(agent, ws, env, [], [], log)
        finally:
            watch.stop()
    load_end = os.getloadavg()
    if source_digest() != digest:
        raise RuntimeError("kb's source changed during the run: results discarded")
    session = sessions[-1]
    first = [s["first_answer_s"] for s in sessions]
    ratio = statistics.median(first) / statistics.median(imports)
    first_cpu = [s["first_answer_cpu_s"] for s in sessions]
    cpu_ratio = statistics.median(first_cpu) / statistics.median(import_cpu)
    rows: list[tuple[str, str, str, str]] = [
        (
            "kb mcp start → initialised (median)",
            f"{statistics.median(s['initialize_s'] for s in sessions):.2f} s",
            "—",
            "info",
        ),
        ("kb mcp start → first `ask` answer, per run", ", ".join(f"{x:.2f} s" for x in first), "—", "info"),
        ("`import sentence_transformers`, per run", ", ".join(f"{x:.2f} s" for x in imports), "—", "info"),
        (
            "first answer / import (medians)",
            f"{statistics.median(first):.2f} s / {statistics.median(imports):.2f} s = {ratio:.3f}×",
            f"≤ {BOUND}×",
            verdict(ratio <= BOUND),
        ),
        (
            "CPU seconds to first answer / import (medians; all threads of kb mcp and its forked watcher)",
            f"{statistics.median(first_cpu):.2f} s / {statistics.median(import_cpu):.2f} s "
            f"= {cpu_ratio:.3f}×",
            "—",
            "info",
        ),
        (
            f"`search` per call, p50 / p95 ({len(session['search_ms'])} calls)",
            f"{pct(session['search_ms'], 0.5):.0f} ms / {pct(session['search_ms'], 0.95):.0f} ms",
            "—",
            "info",
        ),
        (
            f"`ask` per call, p50 / p95 ({len(session['ask_ms'])} calls)",
            f"{pct(session['ask_ms'], 0.5):.0f} ms / {pct(session['ask_ms'], 0.95):.0f} ms",
            "—",
            "info",
        ),
        (
            "citations of those asks found at their lines",
            f"{session['citations_ok']} / {session['citations']}",
            "all",
            verdict(session["citations_ok"] == session["citations"]),
        ),
        (
            "start → first answer, kb watch already running (kb mcp its client)",
            f"{as_client['first_answer_s']:.2f} s",
            "—",
            "info",
        ),
    ]
    print_table(("metric", "measured", "bound", "result"), rows)
    passed = all(r[3] != verdict(False) for r in rows)
    loads = f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    print(f"\nRESULT: {'PASS' if passed else 'FAIL'} ({loads})")
    path = write_results(
        "bench_mcp",
        {
            "started_at": started_at,
            "command": "python benchmarks/bench_mcp.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "versions": versions((*versions().keys(), "mcp")),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "source_digest": digest,
            "import_sentence_transformers_s": imports,
            "first_answer_s": first,
            "first_answer_cpu_s": first_cpu,
            "import_sentence_transformers_cpu_s": import_cpu,
            "cpu_ratio": cpu_ratio,
            "initialize_s": [s["initialize_s"] for s in sessions],
            "ratio": ratio,
            "bound": BOUND,
            "search_ms": session["search_ms"],
            "ask_ms": session["ask_ms"],
            "search_p50_ms": pct(session["search_ms"], 0.5),
            "search_p95_ms": pct(session["search_ms"], 0.95),
            "ask_p50_ms": pct(session["ask_ms"], 0.5),
            "ask_p95_ms": pct(session["ask_ms"], 0.95),
            "citations": session["citations"],
            "citations_ok": session["citations_ok"],
            "first_answer_as_client_s": as_client["first_answer_s"],
            "tools": session["tools"],
            "all_passed": passed,
        },
    )
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
