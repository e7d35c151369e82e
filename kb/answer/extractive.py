"""``ExtractiveAnswerer``, the default answerer: it needs no language model.

It composes its answer only from self-contained units of the retrieved chunks (:mod:`kb.answer.units`:
sentences, a list with its introduction, a table row with its header), each quoted verbatim with its file and
exact lines, so it cannot say anything its sources do not say. The answer reads like the persona's advice
(:mod:`kb.answer.compose`): the team's own decision first (context files, ADRs, PRDs), then its stated
trade-offs, who owns the service the question names, the persona's priorities where the evidence is about the
question *and* the priority, and general guidance from the recommended resources, labelled with its URL.
When only resources speak, the answer says that the workspace has nothing on it. Below the relevance bar it
abstains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kb.answer.compose import Calibration, Candidate, compose
from kb.answer.evidence import Embed, Evidence
from kb.answer.priors import leaf
from kb.answer.units import Unit, units_of
from kb.models import Answer
from kb.personas import Persona
from kb.prompts import CANNOT_ANSWER

__all__ = ["Calibration", "Embed", "Evidence", "ExtractiveAnswerer"]


@dataclass
class _Source:
    hit_score: float
    team_search: bool


class ExtractiveAnswerer:
    """Answers with verbatim, cited units of the retrieved chunks; abstains when none is relevant."""

    name = "extractive"

    def __init__(self, embed: Embed, min_relevance: float = 0.35, calibration: Calibration | None = None):
        self.embed = embed
        self.min_relevance = min_relevance
        self.calibration = calibration or Calibration()

    def candidates(self, evidence: Evidence) -> list[Candidate]:
        """Every unit of the evidence that is still at its lines, scored against the question."""
        pool: dict[tuple[str, int, int, str], tuple[Unit, str]] = {}
        retrieval: dict[tuple[str, str], float] = {}  # section -> its best hit's retrieval score
        for h in [*evidence.hits, *evidence.team]:
            retrieval[(h.path, h.heading)] = max(retrieval.get((h.path, h.heading), 0.0), h.score)
        origin = (
            [(h, "hits") for h in evidence.hits]
            + [(h, "team") for h in evidence.team]
            + [(h, f"aspect:{label}") for label, hs in evidence.aspects.items() for h in hs]
            + [(h, "owners") for h in evidence.owners]
        )
        for hit, where in origin:
            for u in units_of(hit):
                key = (u.hit.path, u.start_line, u.end_line, u.quote)
                if key in pool or not evidence.still_there(u.hit.path, u.start_line, u.end_line, u.quote):
                    continue
                if u.header and not evidence.still_there(u.hit.path, u.header[0], u.header[0], u.header[1]):
                    continue
                pool[key] = (u, where)
        if not pool:
            return []
        units = [u for u, _ in pool.values()]
        leaves = sorted({leaf(u.hit.heading) for u in units} - {""})
        vecs = self.embed([evidence.question, *(u.text for u in units), *leaves])
        qv, uv, lv = vecs[0], vecs[1 : 1 + len(units)], vecs[1 + len(units) :]
        heading_sim = dict(zip(leaves, (lv @ qv).tolist(), strict=True)) if leaves else {}
        aspects = list(evidence.aspect_vectors)
        av = (
            np.stack([evidence.aspect_vectors[a] for a in aspects])
            if aspects
            else np.zeros((0, len(qv)), dtype=np.float32)
        )
        rel = uv @ qv
        asim = uv @ av.T if aspects else np.zeros((len(units), 0))
        out = []
        for i, (u, where) in enumerate(pool.values()):
            out.append(
                Candidate(
                    unit=u,
                    vector=uv[i],
                    relevance=float(rel[i]),
                    heading=float(heading_sim.get(leaf(u.hit.heading), 0.0)),
                    aspects={a: float(asim[i, j]) for j, a in enumerate(aspects)},
                    origin=where,
                    retrieval=retrieval.get((u.hit.path, u.hit.heading), 0.0),
                )
            )
        return out

    def answer(self, evidence: Evidence, persona: Persona | None) -> Answer:
        cands = self.candidates(evidence)
        if not cands or max(c.relevance for c in cands) < self.min_relevance:
            return self._abstain(evidence, persona)
        answer = compose(evidence, persona, cands, self.calibration, self.min_relevance)
        return answer if answer is not None else self._abstain(evidence, persona)

    def _abstain(self, evidence: Evidence, persona: Persona | None) -> Answer:
        return Answer(
            question=evidence.question,
            persona=persona.name if persona else None,
            answer=CANNOT_ANSWER,
            abstained=True,
            citations=[],
            nearest=evidence.hits[:3],
            persona_title=persona.title if persona else None,
        )
