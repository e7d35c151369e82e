"""What ``bench_answers.py`` uses to build its workspace and to choose the answerer's bars and the retrieval
priors on the **tuning half** of the labelled answer set (coordinate search, deterministic)."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from common import PROJECT

from kb import KnowledgeBase
from kb.answer import priors
from kb.answer.compose import Calibration, compose
from kb.answer.extractive import ExtractiveAnswerer
from kb.answer.query import hits_of
from kb.answer.retrieval import Scored, retrieve
from kb.evaluate_answers import Labelled, score_answer, search_rank, summarize
from kb.models import Answer

RESOURCES = {  # folder of ../shared/resources -> the URL the persona links to
    "system-design-primer": "https://github.com/donnemartin/system-design-primer",
    "owasp-top10-2021": "https://owasp.org/www-project-top-ten/",
    "twelve-factor": "https://12factor.net/",
    "google-aip": "https://cloud.google.com/apis/design",
}
Log = Callable[[str], None]


def prepare_workspace(ws: Path, corpus: Path, model_cache: Path, log: Log) -> Path:
    """``data/`` plus the four resource copies, imported and indexed."""
    shutil.copytree(PROJECT / "data", ws)
    kb = KnowledgeBase.open(ws, model_cache_dir=model_cache)
    t = time.perf_counter()
    kb.index()
    for folder, url in RESOURCES.items():
        log(f"importing {folder} as {url} ...")
        kb.import_resource(corpus / folder, url)
    log(f"workspace ready in {time.perf_counter() - t:.0f} s")
    kb.close()
    return ws


# --- retrieval priors -------------------------------------------------------------------------------------
RETRIEVAL_GRID: dict[str, list[float]] = {
    "heading_weight": [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
    "heading_floor": [0.3, 0.4, 0.45, 0.5, 0.6],
    "crowding": [0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05],
}


def tune_retrieval(kb: KnowledgeBase, items: list[Labelled], log: Log, k: int = 8) -> dict[str, Any]:
    """MRR of the labelled answer sections in the top ``k`` of a search, on the tuning half."""
    tune = [i for i in items if i.split == "tune" and i.answer_sections]
    manifest, store = kb.engine.ready()
    base: list[tuple[Labelled, list[Scored], Any]] = []
    for it in tune:
        vec = kb.engine.embedder.embed([it.question])[0]
        base.append((it, retrieve(manifest, store, it.question, vec, k, priors=False), vec))

    def mrr(params: dict[str, float]) -> float:
        total = 0.0
        for it, scored, vec in base:
            copy = [replace(s, extra=dict(s.extra)) for s in scored]
            window = max(3 * k, 100)
            ranked = priors.apply_priors(
                manifest, copy, window, vector=vec, embed=kb.engine.embed_cached, **params
            )
            hits = hits_of(manifest, ranked, k)
            rank = search_rank(lambda q, n, hits=hits: hits[:n], it, k)
            total += 1 / rank if rank else 0.0
        return round(total / len(base), 4)

    current = {"heading_weight": 0.0, "heading_floor": 0.45, "crowding": 0.0}
    start = mrr(current)
    trail = [{"params": dict(current), "mrr": start}]
    for _ in range(2):
        for name, grid in RETRIEVAL_GRID.items():
            scores = {v: mrr({**current, name: v}) for v in grid}
            best = max(scores.values())
            current[name] = min(v for v, s in scores.items() if s == best)  # ties: the smallest change
            trail.append(
                {"params": dict(current), "mrr": best, "tried": {str(v): s for v, s in scores.items()}}
            )
            log(f"retrieval: {name} = {current[name]} (tune MRR {best})")
    return {
        "questions": len(base),
        "without_priors_mrr": start,
        "chosen": current,
        "mrr": trail[-1]["mrr"],
        "trail": trail,
    }


# --- the answer's bars ------------------------------------------------------------------------------------
LEAD_GRID: dict[str, list[Any]] = {
    "lead_min": [0.3, 0.35, 0.4, 0.45, 0.5, 0.55],
    "section_gap": [0.05, 0.1, 0.15, 0.2, 0.3],
    "retrieval_weight": [0.0, 0.25, 0.5, 1.0, 2.0],
    "lead_sections": [1, 2, 3],
    "unit_min": [-1.0, 0.0, 0.1, 0.2, 0.3, 0.4],
    "section_max": [2, 3, 4, 5, 6],
    "lead_max": [4, 5, 6, 7, 8],
    "heading_weight": [0.0, 0.15, 0.3, 0.5],
    "heading_floor": [0.35, 0.45, 0.55],
    "alone_min": [0.3, 0.4, 0.45, 0.5, 0.55, 0.6],
    "alone_max": [2, 3, 4],
}
#: The extra sections, each with the settings tried (loosest last) and the setting that turns it off.
EXTRA_GRID: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "trade-offs": (
        [{"trade_min": m, "trade_max": n} for m in (0.6, 0.5, 0.4, 0.3) for n in (1, 2)],
        {"trade_max": 0},
    ),
    "owner": ([{"owner_max": n} for n in (1, 2, 3)], {"owner_max": 0}),
    "persona sections": (
        [
            {"aspect_relevance": r, "aspect_similarity": a}
            for a in (0.5, 0.4, 0.3, 0.2)
            for r in (0.65, 0.6, 0.55, 0.5, 0.45, 0.4)
        ],
        {"aspect_relevance": 1.0},
    ),
    "resource guidance": (
        [
            {"resource_min": m, "resource_max": n}
            for m in (0.7, 0.65, 0.6, 0.55, 0.5, 0.45)
            for n in (1, 2, 3)
        ],
        {"resource_min": 1.0},
    ),
}
#: The bounds the objective measures against (benchmarks/bench_answers.py BOUNDS); an extra section's own
#: sentences must be at least EXTRA_PRECISION precise (from labelled sections) to be shown.
TARGETS = {
    "leads_with_team_context": 0.90,
    "flags_no_team_context": 0.90,
    "sentence_precision": 0.80,
    "key_fact_recall": 0.70,
}
EXTRA_PRECISION = 0.80
RANDOM_TRIES = 300
CONTEXT_BOOSTS = (0.0, 0.03, 0.06, 0.1)


def objective(summary: Any) -> float:
    """What the lead's search maximises: every share above its bound first (a shortfall costs ten times what
    a gain earns), then the shares themselves, each capped a little above its bound so one cannot buy
    another (ties go to the higher shares); no answer longer than the bound allows, no fragment."""
    if summary.sentences_median > 12 or summary.fragments:
        return -100.0
    total = 0.0
    for name, bound in TARGETS.items():
        value = getattr(summary, name) or 0.0
        total += 10 * min(value - bound, 0.0) + min(value, bound + 0.1) + 0.01 * value  # ties: the better
    return round(total, 5)


def meets_bounds(summary: Any) -> bool:
    return (
        all((getattr(summary, name) or 0.0) >= bound for name, bound in TARGETS.items())
        and objective(summary) > 0
    )


def tune_answers(kb: KnowledgeBase, items: list[Labelled], log: Log) -> dict[str, Any]:
    """Stage 1: the lead's bars by coordinate search (extra sections off). Stage 2: each extra section
    (trade-offs, persona sections, resource guidance) gets the loosest bars at which its own sentences are
    at least EXTRA_PRECISION precise on the tuning half and the bounds still hold — or stays off."""
    tune = [i for i in items if i.split == "tune"]
    answerer = ExtractiveAnswerer(kb.engine.embed_cached, kb.settings.min_relevance)
    root = kb.workspace.root
    design = priors.CONTEXT_BOOST
    results = {}
    for boost in CONTEXT_BOOSTS:  # the persona's context files: an outer loop (the evidence changes with it)
        priors.CONTEXT_BOOST = boost
        results[boost] = _tune_bars(kb, tune, answerer, root, log)
        log(f"context_boost {boost}: tune objective {results[boost]['objective']}")
    top = max(r["objective"] for r in results.values())
    # ties (within 1e-4): the value closest to the designed one
    chosen_boost = min(
        (b for b, r in results.items() if r["objective"] >= top - 1e-4), key=lambda b: abs(b - design)
    )
    best = results[chosen_boost]
    priors.CONTEXT_BOOST = design
    return {
        "context_boost": chosen_boost,
        "context_boost_objectives": {str(b): r["objective"] for b, r in results.items()},
        **best,
    }


def _tune_bars(
    kb: KnowledgeBase, tune: list[Labelled], answerer: ExtractiveAnswerer, root: Path, log: Log
) -> dict[str, Any]:
    prepared = []
    for it in tune:
        evidence, persona, _ = kb.query.evidence(it.question, persona=it.persona)
        prepared.append((it, evidence, persona, answerer.candidates(evidence)))

    def answers(cal: Calibration) -> list[Answer]:
        out = []
        for it, evidence, persona, cands in prepared:
            a = compose(evidence, persona, cands, cal, answerer.min_relevance) if cands else None
            out.append(a if a is not None else Answer(it.question, it.persona, "", True))
        return out

    def run(cal: Calibration) -> Any:
        return summarize(
            [score_answer(it, a, root) for (it, *_), a in zip(prepared, answers(cal), strict=True)]
        )

    off: dict[str, Any] = {}
    for _, closed in EXTRA_GRID.values():
        off.update(closed)
    current = replace(Calibration(), **off)
    first = run(current)
    trail: list[dict[str, Any]] = [{"calibration": asdict(current), "objective": objective(first)}]
    rng = random.Random(13)  # a random search first (deterministic), then coordinate steps from its best
    best_obj = objective(first)
    for _ in range(RANDOM_TRIES):
        cal = replace(current, **{name: rng.choice(grid) for name, grid in LEAD_GRID.items()})
        value = objective(run(cal))
        if value > best_obj:
            current, best_obj = cal, value
    trail.append({"calibration": asdict(current), "objective": best_obj, "after": "random search"})
    log(f"lead: random search best {best_obj}")
    for _ in range(3):
        changed = False
        for name, grid in LEAD_GRID.items():
            now = objective(run(current))
            results = {v: objective(run(replace(current, **{name: v}))) for v in grid}
            best = max(results.values())
            if now < best:
                current = replace(current, **{name: next(v for v in grid if results[v] == best)})
                changed = True
            log(f"lead: {name} = {getattr(current, name)} (tune objective {max(best, now)})")
        trail.append({"calibration": asdict(current), "objective": objective(run(current))})
        if not changed:
            break
    extras: dict[str, Any] = {}
    default = Calibration()
    for section, (grid, closed) in EXTRA_GRID.items():
        base = answers(current)
        found, seen = None, 0
        for setting in grid:
            cal = replace(current, **setting)
            n, good = _extra_precision(prepared, base, answers(cal))
            seen += n
            if n and good / n >= EXTRA_PRECISION and meets_bounds(run(cal)):
                found = (setting, n, good)  # the loosest so far that qualifies
        if found:
            extras[section] = {"setting": found[0], "sentences": found[1], "precise": found[2]}
            current = replace(current, **found[0])
        elif not seen:  # the tuning half never calls for this section: it keeps kb's default
            keep = {k: getattr(default, k) for k in closed}
            extras[section] = {
                "setting": keep,
                "sentences": 0,
                "note": "no question of the tuning half shows it",
            }
            current = replace(current, **keep)
        else:
            extras[section] = None
        log(f"{section}: {extras[section]['setting'] if extras[section] else 'off (never precise enough)'}")
    final = run(current)
    return {
        "questions": len(tune),
        "start": {"calibration": asdict(Calibration()), "summary": asdict(run(Calibration()))},
        "chosen": asdict(current),
        "extras": extras,
        "objective": objective(final),
        "summary": asdict(final),
        "trail": trail,
    }


def _extra_precision(prepared: list[Any], base: list[Answer], new: list[Answer]) -> tuple[int, int]:
    """Sentences the new answers add to the base ones, and how many cite a labelled section."""
    from kb.evaluate_answers import label_matches

    n = good = 0
    for (it, *_), before, after in zip(prepared, base, new, strict=True):
        had = {s.text for s in before.sentences}
        cites = {c.id: c for c in after.citations}
        for s in after.sentences:
            if s.text in had:
                continue
            n += 1
            good += any(
                label_matches(lb, cites[i].path, cites[i].heading)
                for i in s.citations
                for lb in it.team + it.resources
            )
    return n, good
