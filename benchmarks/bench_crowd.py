#!/usr/bin/env python
"""A crowd of clients on one ``kb watch`` (issue 14): errors, fallbacks, IndexLockedError, latency.

In a temporary copy of the sample workspace (``data/``): ``kb index``, then ``kb watch`` as its own process
(real model, real Chroma). Then ``--clients`` threads in this process call the library for ``--seconds``,
each through its own ``KnowledgeBase.open(ws)`` — exactly what a script or an agent does — in a loop of
``search`` (80 %), ``ask`` (10 %), ``status`` (5 %) and ``index`` (5 %). Every call opens a new connection to
the watcher's socket, so the crowd also tests the backlog, the handler cap and the clients' wait.

Counted: errors (any exception), fallbacks (a call that opened the index in this process instead of going to
the watcher: ``kb.engine.opened``), ``IndexLockedError`` s; latency p50/p95/p99 per verb. Bounds: 0 errors,
0 fallbacks, 0 IndexLockedError.

Usage:  python benchmarks/bench_crowd.py [--clients 64] [--seconds 60] [--keep]

Prints a markdown table on stdout, progress on stderr, writes benchmarks/results/bench_crowd.json. Exits 0
when the benchmark ran (a failed bound is printed as FAIL), non-zero on errors."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import (
    PROJECT,
    child_env,
    info,
    logger,
    machine,
    offline,
    print_table,
    scratch,
    source_digest,
    verdict,
    versions,
    write_results,
)

from kb.testing import Background, copy_workspace, kb_command, run_kb

say = logger()
QUESTIONS = [
    "How should we paginate the notifications API?",
    "Who owns the notifications service?",
    "What are the rate limits?",
    "How long are notifications retained?",
    "What is the usage export format?",
]
MIX = [("search", 0.80), ("ask", 0.10), ("status", 0.05), ("index", 0.05)]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def client(ws: Path, stop: float, seed: int, out: dict[str, Any], lock: threading.Lock) -> None:
    from kb import KnowledgeBase
    from kb.errors import IndexLockedError

    rng = random.Random(seed)
    kb = KnowledgeBase.open(ws)
    latencies: dict[str, list[float]] = {verb: [] for verb, _ in MIX}
    errors: Counter[str] = Counter()
    locked = fallbacks = 0
    examples: list[str] = []
    while time.monotonic() < stop:
        verb = rng.choices([v for v, _ in MIX], weights=[w for _, w in MIX])[0]
        question = rng.choice(QUESTIONS)
        started = time.perf_counter()
        try:
            if verb == "search":
                kb.search(question, k=5)
            elif verb == "ask":
                kb.ask(question, persona="auto")
            elif verb == "status":
                kb.status()
            else:
                kb.index()
            latencies[verb].append(time.perf_counter() - started)
        except IndexLockedError as exc:
            locked += 1
            errors[type(exc).__name__] += 1
            examples.append(str(exc))
        except Exception as exc:  # counted, never fatal: the crowd goes on
            errors[type(exc).__name__] += 1
            examples.append(f"{type(exc).__name__}: {exc}")
        if kb.engine.opened:  # went around the watcher: opened Chroma in this process
            fallbacks += 1
            kb.close()
            kb = KnowledgeBase.open(ws)
    with lock:
        for verb, values in latencies.items():
            out["latencies"][verb].extend(values)
        out["errors"].update(errors)
        out["locked"] += locked
        out["fallbacks"] += fallbacks
        out["examples"].extend(examples[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    offline(drop_kb_settings=True, log=say)
    digest = source_digest()
    load_start = os.getloadavg()
    with scratch("kb-bench-crowd-", args.keep, say) as tmp:
        ws = copy_workspace(PROJECT / "data", tmp / "ws")
        env = child_env(tmp / "models")
        os.environ.update(env)
        say("kb index (real model; the ONNX export happens once here)")
        r = run_kb("index", "--workspace", ws, env=env, timeout=1800)
        if r.returncode != 0:
            raise SystemExit(f"kb index failed: {r.stderr}")
        watcher = Background(kb_command("watch", "--workspace", ws), tmp / "watch.log", env=env)
        watcher.wait_for_line()
        say(f"kb watch (pid {watcher.pid}) ready; {args.clients} clients for {args.seconds:g} s")
        out: dict[str, Any] = {
            "latencies": {verb: [] for verb, _ in MIX},
            "errors": Counter(),
            "locked": 0,
            "fallbacks": 0,
            "examples": [],
        }
        lock = threading.Lock()
        cpu0 = _cpu_seconds(watcher.pid)
        stop = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=client, args=(ws, stop, n, out, lock), daemon=True)
            for n in range(args.clients)
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 600)
        wall = time.perf_counter() - started
        cpu = _cpu_seconds(watcher.pid) - cpu0
        alive = sum(t.is_alive() for t in threads)
        code = watcher.stop()
        log_tail = watcher.text()[-2000:]
        if args.keep:
            shutil.copy(tmp / "watch.log", tmp / "watch.kept.log")
    lat = out["latencies"]
    every = [x for values in lat.values() for x in values]
    calls = len(every)
    errors = sum(out["errors"].values())
    rows = [
        ("clients × seconds", f"{args.clients} × {args.seconds:g} s (wall {wall:.1f} s)", "—", "info"),
        info("calls answered", f"{calls} ({calls / wall:.1f}/s)"),
        ("errors", f"{errors} {dict(out['errors']) or ''}".strip(), "0", verdict(errors == 0)),
        (
            "fallbacks (index opened beside the watcher)",
            out["fallbacks"],
            "0",
            verdict(out["fallbacks"] == 0),
        ),
        ("IndexLockedError", out["locked"], "0", verdict(out["locked"] == 0)),
        ("client threads still running at the end", alive, "0", verdict(alive == 0)),
        info("latency p50 / p95 / p99, all calls", _ms(every)),
    ]
    rows += [info(f"{verb}: calls, p50 / p95 / p99", f"{len(v)}, {_ms(v)}") for verb, v in lat.items()]
    rows.append(info("kb watch CPU during the crowd", f"{cpu:.1f} s ({100 * cpu / wall:.0f} % of one core)"))
    print_table(("metric", "measured", "bound", "result"), rows)
    passed = errors == 0 and out["fallbacks"] == 0 and out["locked"] == 0 and alive == 0
    print(f"\nRESULT: {'PASS' if passed else 'FAIL'}")
    data = {
        "benchmark": "bench_crowd",
        "clients": args.clients,
        "seconds": args.seconds,
        "wall_s": wall,
        "calls": calls,
        "errors": dict(out["errors"]),
        "error_examples": out["examples"][:10],
        "fallbacks": out["fallbacks"],
        "index_locked_errors": out["locked"],
        "latency_ms": {
            verb: {"n": len(v), "p50": _q(v, 0.5), "p95": _q(v, 0.95), "p99": _q(v, 0.99)}
            for verb, v in {**lat, "all": every}.items()
        },
        "watcher_cpu_s": cpu,
        "watcher_exit_code": code,
        "watcher_log_tail": log_tail if not passed else "",
        "all_passed": passed,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "machine": machine(),
        "versions": versions(),
        "source_digest": digest,
    }
    if source_digest() != digest:
        raise SystemExit("kb's source changed during the run: results discarded")
    say(f"wrote {write_results('bench_crowd', data)}")
    return 0


def _q(values: list[float], q: float) -> float | None:
    return round(1000 * pct(values, q), 1) if values else None


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    return (
        " / ".join(f"{1000 * pct(values, q):.0f}" for q in (0.5, 0.95, 0.99))
        + f" ms (mean {1000 * statistics.mean(values):.0f})"
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    raise SystemExit(main())
