#!/usr/bin/env python
"""Answers an expert would give: the labelled answer set, the freshness check, and kb ask's timings.

The workspace is the sample workspace (``data/``) plus the four offline copies of the backend engineer's
recommended resources (``../shared/resources``), imported with ``kb resources import`` and indexed.

Measures, in one run:

* ``kb eval --answers benchmarks/questions/answers.jsonl`` for the extractive answerer, on the tuning half
  and the report half (bounds: leads with team context >= 0.90, sentence precision >= 0.80, key-fact recall
  >= 0.70, fragments = 0, supported = 1.00, median answer <= 12 sentences), with the retrieval of the labelled
  answer sections (hit@8, MRR);
* the same for a real language model (SmolLM2-135M-Instruct on llama.cpp's server, ``-k 3``; bound:
  supported >= 0.95), unless ``--no-llm`` (``--llm-questions N``: the first N questions of each half);
* the freshness check on a 1,000-file workspace: the stat-only comparison of the files with the index
  (``engine.stale_paths()``), and a refresh with nothing changed and with 10 files changed;
* ``kb ask`` cold (a new process) and warm (in process), for this checkout and for ``--baseline DIR`` (another
  checkout, e.g. the commit before), interleaved in the same run.

``--tune`` chooses the extractive answerer's bars (:class:`kb.answer.compose.Calibration`) and
``--tune-retrieval`` the retrieval priors (:mod:`kb.answer.priors`) by coordinate search on the **tuning half
only**; they print the chosen values and write ``benchmarks/results/tune_answers.json`` /
``tune_retrieval.json`` (the values then go into the code by hand).

Usage:  python benchmarks/bench_answers.py [--workspace WS] [--tune] [--tune-retrieval] [--no-llm]
        [--llm-questions N] [--baseline DIR] [--runs N] [--keep]

``--workspace WS`` reuses a prepared workspace (data/ plus the four resources, indexed) instead of building
one (about 5 minutes of embedding). Prints markdown tables on stdout, progress on stderr, writes
``benchmarks/results/bench_answers.json``. Exits 0 when it ran (a failed bound prints FAIL).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from answer_tuning import prepare_workspace, tune_answers, tune_retrieval
from common import (
    CORPUS,
    PROJECT,
    child_env,
    logger,
    machine,
    offline,
    print_table,
    scratch,
    verdict,
    write_results,
)

from kb import KnowledgeBase
from kb.evaluate_answers import AnswersReport, read_answer_set
from kb.testing import FakeEmbedder, LlamaServer, llama_server_missing

QUESTIONS = PROJECT / "benchmarks" / "questions" / "answers.jsonl"
COLD_QUESTION = "How should I handle pagination for large datasets?"
say = logger()

BOUNDS = {  # metric: (bound, ">=" or "<=" or "==")
    "leads_with_team_context": (0.90, ">="),
    "sentence_precision": (0.80, ">="),
    "key_fact_recall": (0.70, ">="),
    "fragments": (0, "=="),
    "supported": (1.00, ">="),
    "sentences_median": (12, "<="),
}
LLM_BOUNDS = {"supported": (0.95, ">=")}


def check(value: float | None, bound: float, op: str) -> bool:
    if value is None:
        return False
    return value >= bound if op == ">=" else value <= bound if op == "<=" else value == bound


def rows_of(report: AnswersReport, bounds: dict[str, tuple[float, str]], label: str) -> list[tuple[Any, ...]]:
    rows = []
    for name in ("tune", "report"):
        s = asdict(report.splits[name])
        for metric in (
            "leads_with_team_context",
            "flags_no_team_context",
            "sentence_precision",
            "key_fact_recall",
            "fragments",
            "supported",
            "sentences_median",
            "words_median",
            "retrieval_hit_at_k",
            "retrieval_mrr",
            "answered",
        ):
            if metric in bounds:
                b, op = bounds[metric]
                rows.append(
                    (f"{label} {name}: {metric}", s[metric], f"{op} {b}", verdict(check(s[metric], b, op)))
                )
            else:
                rows.append((f"{label} {name}: {metric}", s[metric], "—", "info"))
    return rows


def freshness(tmp: Path, runs: int) -> dict[str, Any]:
    """The stat-only check and refreshes on a 1,000-file workspace (a fake embedder indexes it quickly:
    what is measured is the check, which reads no file)."""
    ws = tmp / "fresh-ws"
    for i in range(1000):
        folder = ws / ".workos" / "context" / f"team-{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"note-{i:04d}.md").write_text(f"# Note {i}\n\nService {i} is owned by team {i % 20}.\n")
    kb = KnowledgeBase.open(ws, embedder=FakeEmbedder(), model_cache_dir=tmp / "models")
    kb.index()
    check_ms, noop_ms, changed_ms = [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        assert kb.engine.stale_paths() == []
        check_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        kb.engine.refresh(200)
        noop_ms.append((time.perf_counter() - t) * 1000)
    for r in range(runs):
        for i in range(10):
            f = ws / ".workos" / "context" / f"team-{i % 20:02d}" / f"note-{i:04d}.md"
            f.write_text(f"# Note {i}\n\nService {i} moved to team {r}.\n")
        t = time.perf_counter()
        done = kb.engine.refresh(200)
        changed_ms.append((time.perf_counter() - t) * 1000)
        assert len(done.refreshed) == 10 and not done.stale
    kb.close()
    med = statistics.median
    return {
        "files": 1000,
        "check_ms_median": round(med(check_ms), 2),
        "check_ms": [round(x, 2) for x in check_ms],
        "refresh_nothing_changed_ms_median": round(med(noop_ms), 2),
        "refresh_10_changed_ms_median": round(med(changed_ms), 2),
        "embedder": "fake (the check and the refresh's bookkeeping; embedding 10 changed files is extra)",
    }


_WARM = """
import json, sys, time
from kb import KnowledgeBase
kb = KnowledgeBase.open(sys.argv[1])
kb.ask(sys.argv[2], persona="backend-engineer")
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    kb.ask(sys.argv[2], persona="backend-engineer")
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def timings(ws: Path, model_cache: Path, checkouts: dict[str, Path], runs: int) -> dict[str, Any]:
    """Cold ``kb ask`` (a new process) and warm asks (one process), each checkout interleaved."""
    out: dict[str, Any] = {name: {"cold_s": [], "warm_s": []} for name in checkouts}
    for _ in range(runs):
        for name, root in checkouts.items():
            env = {**child_env(model_cache), "PYTHONPATH": str(root)}
            t = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kb",
                    "ask",
                    COLD_QUESTION,
                    "--persona",
                    "backend-engineer",
                    "--json",
                    "--workspace",
                    str(ws),
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=root,
                timeout=600,
            )
            out[name]["cold_s"].append(round(time.perf_counter() - t, 3))
            if r.returncode not in (0, 3):
                raise RuntimeError(f"kb ask ({name}) exited {r.returncode}: {r.stderr[-500:]}")
    for name, root in checkouts.items():
        env = {**child_env(model_cache), "PYTHONPATH": str(root)}
        r = subprocess.run(
            [sys.executable, "-c", _WARM, str(ws), COLD_QUESTION, str(max(runs, 5))],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
            timeout=900,
        )
        if r.returncode:
            raise RuntimeError(f"warm asks ({name}) failed: {r.stderr[-500:]}")
        out[name]["warm_s"] = [round(x, 3) for x in json.loads(r.stdout.strip().splitlines()[-1])]
    for v in out.values():
        v["cold_median_s"] = round(statistics.median(v["cold_s"]), 3)
        v["warm_median_s"] = round(statistics.median(v["warm_s"]), 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--workspace", type=Path, help="a prepared workspace (data/ + the four resources, indexed)"
    )
    ap.add_argument("--tune", action="store_true", help="choose the answer bars on the tuning half")
    ap.add_argument(
        "--tune-retrieval", action="store_true", help="choose the retrieval priors on the tuning half"
    )
    ap.add_argument("--no-llm", action="store_true", help="skip the language model")
    ap.add_argument(
        "--llm-questions", type=int, default=0, help="LLM: first N questions of each half (0: all)"
    )
    ap.add_argument(
        "--baseline", type=Path, help="another checkout whose kb ask timings are measured alongside"
    )
    ap.add_argument("--runs", type=int, default=3, help="cold/warm kb ask repetitions, freshness repetitions")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument(
        "--corpus", type=Path, default=CORPUS, help="the offline resource copies (../shared/resources)"
    )
    ap.add_argument(
        "--model-cache", type=Path, help="where the model's ONNX export is kept (default: temporary)"
    )
    ap.add_argument("--only-tune", action="store_true", help="stop after --tune / --tune-retrieval")
    args = ap.parse_args()
    if not args.corpus.is_dir():
        print(f"SKIP: the resource copies are not at {args.corpus}")
        return 0
    offline(drop_kb_settings=True, log=say)
    load_start = os.getloadavg()
    started = time.perf_counter()
    items = read_answer_set(QUESTIONS)
    result: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    with scratch("kb-bench-answers-", args.keep, say) as tmp:
        model_cache = args.model_cache or tmp / "models"
        ws = (
            args.workspace.resolve()
            if args.workspace
            else prepare_workspace(tmp / "ws", args.corpus, model_cache, say)
        )
        kb = KnowledgeBase.open(ws, model_cache_dir=model_cache)
        if args.tune_retrieval:
            result["tune_retrieval"] = tune_retrieval(kb, items, say)
            write_results("tune_retrieval", result["tune_retrieval"])
        if args.tune:
            result["tune_answers"] = tune_answers(kb, items, say)
            write_results("tune_answers", result["tune_answers"])
        if args.only_tune:
            return 0
        say("extractive answers on the labelled set ...")
        extractive = kb.evaluate_answers(QUESTIONS)
        result["extractive"] = extractive.to_dict()
        rows = rows_of(extractive, BOUNDS, "extractive")
        if not args.no_llm and llama_server_missing() is None:
            chosen = [
                it
                for half in ("tune", "report")
                for it in [i for i in items if i.split == half][: args.llm_questions or None]
            ]
            subset = tmp / "llm-questions.jsonl"
            subset.write_text("".join(json.dumps(asdict(i)) + "\n" for i in chosen))
            say(f"model answers on {len(chosen)} questions (SmolLM2-135M, llama.cpp server) ...")
            with LlamaServer(tmp / "server.log", n_ctx=2048) as url:
                llm_kb = KnowledgeBase.open(
                    ws,
                    model_cache_dir=model_cache,
                    embedder=kb.embedder,
                    llm_base_url=url,
                    top_k=3,
                    llm_context_window=2048,
                    llm_max_tokens=160,
                    llm_timeout=600,
                )
                model = llm_kb.evaluate_answers(subset, llm="openai-compatible")
            result["llm"] = model.to_dict()
            rows += rows_of(model, LLM_BOUNDS, "SmolLM2")
        say("freshness check on a 1,000-file workspace ...")
        result["freshness"] = fresh = freshness(tmp, args.runs)
        rows.append(
            ("freshness: stale_paths() on 1,000 files, median ms", fresh["check_ms_median"], "—", "info")
        )
        rows.append(
            (
                "freshness: refresh, nothing changed, median ms",
                fresh["refresh_nothing_changed_ms_median"],
                "—",
                "info",
            )
        )
        rows.append(
            (
                "freshness: refresh, 10 files changed, median ms",
                fresh["refresh_10_changed_ms_median"],
                "—",
                "info",
            )
        )
        say("kb ask cold and warm ...")
        checkouts = {
            "this checkout": PROJECT,
            **({"baseline": args.baseline.resolve()} if args.baseline else {}),
        }
        result["timings"] = times = timings(ws, model_cache, checkouts, args.runs)
        for name, t in times.items():
            rows.append((f"kb ask cold, median s ({name})", t["cold_median_s"], "—", "info"))
            rows.append((f"kb ask warm, median s ({name})", t["warm_median_s"], "—", "info"))
        if "baseline" in times:
            for kind in ("cold", "warm"):
                now, then = times["this checkout"][f"{kind}_median_s"], times["baseline"][f"{kind}_median_s"]
                ok = now <= then * 1.10 + 0.05
                rows.append(
                    (f"kb ask {kind}: this / baseline", round(now / then, 3), "<= 1.10 (+50 ms)", verdict(ok))
                )
        kb.close()
    result["load_average"] = {"start": load_start, "end": os.getloadavg()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["rows"] = [list(r) for r in rows]
    result["all_passed"] = all(r[3] != verdict(False) for r in rows)
    print_table(("metric", "measured", "bound", "pass/fail"), rows)
    fails = [r[0] for r in rows if r[3] == verdict(False)]
    print(f"\nRESULT: {'PASS' if not fails else 'FAIL (' + '; '.join(fails) + ')'}")
    print(
        f"(load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; {result['seconds']} s)"
    )
    write_results("bench_answers", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
