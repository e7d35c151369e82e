"""``ExtractiveAnswerer``, the default answerer: it needs no language model.

The extractive answerer composes its answer only from sentences that are in the retrieved chunks
(:func:`kb.answer.evidence.sentences_of`), each quoted verbatim with its file and exact line range, so it
cannot say anything its sources do not say. The persona shapes the answer: its "What I Always Consider"
priorities decide which further evidence is looked for and how the answer is organised (one section per
priority that the sources speak to). The answer comes back structured: ``Answer.sentences``, each with its
citation id, next to the rendered markdown.
"""

from __future__ import annotations

import numpy as np

from kb.answer.evidence import Embed, Evidence, Sentence, sentences_of
from kb.models import Answer, AnswerSentence, Citation
from kb.personas import Consideration, Persona
from kb.prompts import CANNOT_ANSWER

__all__ = ["Embed", "Evidence", "ExtractiveAnswerer"]  # Embed, Evidence: from kb.answer.evidence


class ExtractiveAnswerer:
    """Answers with verbatim, cited sentences from the retrieved chunks; abstains when none is relevant."""

    name = "extractive"

    def __init__(self, embed: Embed, min_relevance: float = 0.35, max_direct: int = 4, per_aspect: int = 2):
        self.embed = embed
        self.min_relevance = min_relevance
        self.max_direct = max_direct
        self.per_aspect = per_aspect

    def answer(self, evidence: Evidence, persona: Persona | None) -> Answer:
        question = evidence.question
        pool: dict[tuple[str, int, int, str], Sentence] = {}
        for hit in [*evidence.hits, *(h for hs in evidence.aspects.values() for h in hs)]:
            for s in sentences_of(hit):
                pool.setdefault((s.hit.path, s.start_line, s.end_line, s.text), s)
        sentences = list(pool.values())
        title = persona.title if persona else None
        if not sentences:
            return self._abstain(evidence, persona)
        aspects: list[Consideration] = [
            a for a in (persona.always_consider if persona else []) if a.label in evidence.aspect_vectors
        ]
        vecs = self.embed([question] + [s.text for s in sentences])
        qv, sv = vecs[0], vecs[1:]
        av = (
            np.stack([evidence.aspect_vectors[a.label] for a in aspects])
            if aspects
            else np.zeros((0, len(qv)))
        )
        rel = sv @ qv
        order = np.argsort(-rel)
        if rel[order[0]] < self.min_relevance:
            return self._abstain(evidence, persona)

        chosen: list[int] = []

        def novel(i: int) -> bool:
            return all(float(sv[i] @ sv[j]) < 0.92 for j in chosen)

        direct: list[int] = []
        for i in order:
            if rel[i] < self.min_relevance or len(direct) >= self.max_direct:
                break
            if novel(i):
                direct.append(int(i))
                chosen.append(int(i))
        sections: list[tuple[str, list[int]]] = []
        if aspects:
            # A sentence may serve a priority when it is about the question (a looser bar) and about the
            # priority.
            floor = self.min_relevance * 0.7
            aspect_sim = sv @ av.T  # (sentences, aspects)
            best_aspect = aspect_sim.argmax(axis=1)
            for a_idx, aspect in enumerate(aspects):
                picks: list[int] = []
                for i in np.argsort(-(aspect_sim[:, a_idx] + rel)):
                    if len(picks) >= self.per_aspect:
                        break
                    i = int(i)
                    if (
                        i in chosen
                        or rel[i] < floor
                        or best_aspect[i] != a_idx
                        or aspect_sim[i, a_idx] < 0.15
                    ):
                        continue
                    if novel(i):
                        picks.append(i)
                        chosen.append(i)
                if picks:
                    sections.append((aspect.label, picks))

        citations: list[Citation] = []
        cite_of: dict[int, int] = {}

        def cite(i: int) -> int:
            if i not in cite_of:
                s = sentences[i]
                citations.append(
                    Citation(
                        id=len(citations) + 1,
                        path=s.hit.path,
                        start_line=s.start_line,
                        end_line=s.end_line,
                        heading=s.hit.heading,
                        quote=s.text,
                        score=round(float(rel[i]), 4),
                        url=s.hit.url,
                    )
                )
                cite_of[i] = citations[-1].id
            return cite_of[i]

        parts: list[str] = []
        sources = {sentences[i].hit.path for i in chosen}
        if title:
            parts.append(
                f"**{title}** · {len(sources)} source{'s' if len(sources) != 1 else ''} in the knowledge base"
            )
            parts.append("")
        said: list[AnswerSentence] = []

        def say(i: int) -> str:
            said.append(AnswerSentence(sentences[i].text, [cite(i)], True))
            return f"- {sentences[i].text} [{said[-1].citations[0]}]"

        parts.extend(say(i) for i in direct)
        for label, picks in sections:
            parts.append("")
            parts.append(f"**{label}**")
            parts.extend(say(i) for i in picks)
        return Answer(
            sentences=said,
            question=question,
            persona=persona.name if persona else None,
            answer="\n".join(parts),
            abstained=False,
            citations=citations,
            persona_title=title,
        )

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
