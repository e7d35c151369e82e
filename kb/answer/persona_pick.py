"""Picking a persona for a question: the one whose "When to Consult Me" questions and expertise are closest.

Each persona is represented by its consultation questions, its expertise lines and its domain; the score of a
persona is the mean of its three closest lines' cosine similarity to the question. Below ``min_score`` no
persona fits and the question is answered without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kb.answer.evidence import Embed
from kb.personas import Persona


@dataclass
class Pick:
    persona: Persona
    score: float


def persona_lines(p: Persona) -> list[str]:
    lines = [*p.consult_questions, *p.expertise]
    if p.domain:
        lines.append(f"{p.title}: {p.domain}")
    return lines or [p.title]


class PersonaPicker:
    """Embeds every persona's lines once; ``pick(question_vector)`` is then one matrix product."""

    def __init__(self, personas: Sequence[Persona], embed: Embed, min_score: float = 0.3, top: int = 3):
        self.personas = list(personas)
        self.min_score = min_score
        self.top = top
        lines = [persona_lines(p) for p in self.personas]
        self._owner = np.repeat(np.arange(len(lines)), [len(x) for x in lines])
        self._vectors = embed([t for x in lines for t in x]) if lines else np.zeros((0, 1))

    def scores(self, question_vector: np.ndarray) -> list[float]:
        sims = self._vectors @ question_vector if len(self._vectors) else np.zeros(0)
        out = []
        for i in range(len(self.personas)):
            mine = np.sort(sims[self._owner == i])[::-1][: self.top]
            out.append(float(mine.mean()) if len(mine) else 0.0)
        return out

    def pick(self, question_vector: np.ndarray) -> Pick | None:
        if not self.personas:
            return None
        scores = self.scores(question_vector)
        best = int(np.argmax(scores))
        return Pick(self.personas[best], scores[best]) if scores[best] >= self.min_score else None
