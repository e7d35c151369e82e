"""Priors applied to the fused candidates: the team's own sections first when their heading names the
question's topic, files the persona reads first, and no single file crowding out the others.

The team's questions ("who do I page", "how do I scale this service", "which tools do we use") are answered
by one section of a context file or PRD whose heading names the topic ("On-call rotation", "Scaling
services"). Two things kept such sections out of the top hits: a long document mentioning the question's
entity everywhere (the notifications PRD for "notifications-service") filled every slot, and general resources
on the same topic outranked the team's short section. So, among the top fused candidates:

* **heading match** — a chunk of a team source (``context``, ``prd``) gains
  ``HEADING_WEIGHT * max(0, cos(question, its section's heading) - HEADING_FLOOR)`` (headings embedded once,
  cached in the manifest);
* **context files** — a chunk of a file the persona's "Context Files I Use" names gains ``CONTEXT_BOOST``
  (``kb ask`` with a persona);
* **crowding** — the n-th chunk of one file (0-based, in score order) loses ``n * CROWDING``: the best chunk
  of every file keeps its score, so the order of files is unchanged (document-level metrics such as SciFact's
  nDCG@10 cannot move), while a file's fifth-best section no longer hides another file's best.

The constants were chosen on the tuning half of ``benchmarks/questions/answers.jsonl`` (retrieval of the
labelled answer sections; ``benchmarks/bench_answers.py --tune-retrieval``), never on its report half.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np

from kb.index.manifest import Manifest

TEAM_TYPES = ("context", "prd")
HEADING_WEIGHT = 0.5
HEADING_FLOOR = 0.4
CONTEXT_BOOST = 0.03
CROWDING = 0.03

Embed = Callable[[Sequence[str]], np.ndarray]


class _Scored(Protocol):  # what this module needs of kb.answer.retrieval.Scored
    chunk_id: str
    score: float
    extra: dict[str, float]


S = TypeVar("S", bound=_Scored)


def leaf(heading: str) -> str:
    """The last part of a heading breadcrumb ("Acme Ledger Tech Stack › Caching strategy" -> "Caching
    strategy")."""
    return heading.rsplit("›", 1)[-1].strip()


def matches_any(path: str, globs: Sequence[str]) -> bool:
    """``path`` is one of ``globs`` (shell globs; a glob ending in ``/`` names a folder)."""
    for g in globs:
        g = g.strip()
        while g.startswith("./"):
            g = g[2:]
        if g.endswith("/"):
            g += "*"
        if fnmatch.fnmatchcase(path, g):
            return True
    return False


def apply_priors(
    manifest: Manifest,
    scored: list[S],
    window: int,
    *,
    vector: np.ndarray | None = None,
    embed: Embed | None = None,
    boost: Sequence[str] = (),
    heading_weight: float | None = None,
    heading_floor: float | None = None,
    context_boost: float | None = None,
    crowding: float | None = None,
) -> list[S]:
    """The top ``window`` candidates re-scored with the priors above (None: the module's constants),
    re-sorted; the rest follow unchanged."""
    heading_weight = HEADING_WEIGHT if heading_weight is None else heading_weight
    heading_floor = HEADING_FLOOR if heading_floor is None else heading_floor
    context_boost = CONTEXT_BOOST if context_boost is None else context_boost
    crowding = CROWDING if crowding is None else crowding
    head, tail = scored[:window], scored[window:]
    if not head:
        return scored
    rows = manifest.chunks_by_id([s.chunk_id for s in head])
    head = [s for s in head if s.chunk_id in rows]
    paths = sorted({rows[s.chunk_id].path for s in head})
    types = {p: src.source_type for p, src in manifest.sources(paths).items()}
    team = [s for s in head if types.get(rows[s.chunk_id].path) in TEAM_TYPES]
    if team and vector is not None and embed is not None and heading_weight:
        leaves = sorted({leaf(rows[s.chunk_id].heading) for s in team} - {""})
        sims = dict(zip(leaves, (embed(leaves) @ vector).tolist(), strict=True)) if leaves else {}
        for s in team:
            gain = heading_weight * max(0.0, sims.get(leaf(rows[s.chunk_id].heading), 0.0) - heading_floor)
            if gain:
                s.score += gain
                s.extra["heading"] = round(gain, 4)
    if boost and context_boost:
        for s in head:
            if matches_any(rows[s.chunk_id].path, boost):
                s.score += context_boost
                s.extra["context_file"] = context_boost
    if crowding:
        head.sort(key=lambda s: -s.score)
        seen: Counter[str] = Counter()
        for s in head:
            path = rows[s.chunk_id].path
            if seen[path]:
                s.score -= crowding * seen[path]
                s.extra["crowding"] = round(crowding * seen[path], 4)
            seen[path] += 1
    return sorted(head, key=lambda s: -s.score) + tail
