"""``LLMAnswerer``: the :class:`kb.answer.answerers.Answerer` whose answers a language model writes.

retrieval (:class:`kb.answer.query.Query`) → :func:`kb.answer.grounding.build_prompt` → ``Generator.generate``
(streamed) → :func:`kb.answer.verify.verify` → :class:`kb.models.Answer` with ``sentences`` (each with its
citation ids and whether they support it) and verbatim, line-exact citations.
"""

from __future__ import annotations

import logging
import time

from kb.answer.evidence import Embed, Evidence
from kb.answer.grounding import Prompt, build_prompt, estimate_tokens
from kb.answer.verify import Verified, verify
from kb.backends.llm import Generator
from kb.models import Answer, AnswerSentence, Hit, OnToken
from kb.personas import Persona
from kb.prompts import CANNOT_ANSWER, GUIDANCE, NO_TEAM_CONTEXT, TEAM_FILTERED_OUT

#: The team's own hits go first in the model's context when they score at least this share of the best hit.
TEAM_FIRST = 0.5

log = logging.getLogger(__name__)


class LLMAnswerer:
    """A ``generator`` writes from the retrieved chunks, each sentence checked against its citation."""

    def __init__(
        self,
        generator: Generator,
        embed: Embed,
        *,
        max_tokens: int = 384,
        temperature: float = 0.1,
        unsupported: str = "remove",
        on_token: OnToken | None = None,
        priority_hits: int = 2,
        team_hits: int = 2,
    ):
        self.generator = generator
        self.priority_hits = priority_hits
        self.team_hits = team_hits
        self.name = generator.name
        self.embed = embed
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.unsupported = unsupported
        self.on_token = on_token
        self.timings: dict[str, float] = {}
        self.last_prompt: Prompt | None = None
        self.last_raw = ""

    def answer(self, evidence: Evidence, persona: Persona | None) -> Answer:
        t0 = time.perf_counter()
        hits: list[Hit] = []
        seen: set[str] = set()
        # The team's own best hits first (its decision leads), then the question's hits (most relevant first),
        # then the best hits of the persona's priorities.
        extra = [hs[0] for hs in evidence.aspects.values() if hs][: self.priority_hits]
        team = [
            h
            for h in evidence.team
            if h.score >= TEAM_FIRST * max((x.score for x in evidence.hits), default=0)
        ]
        for hit in [*team[: self.team_hits], *evidence.hits, *extra]:
            key = hit.chunk_id or f"{hit.path}:{hit.start_line}"
            if key not in seen:
                seen.add(key)
                hits.append(hit)
        title = persona.title if persona else None
        base = Answer(
            evidence.question,
            persona.name if persona else None,
            CANNOT_ANSWER,
            True,
            nearest=evidence.hits[:3],
            persona_title=title,
            backend=self.name,
        )
        if not hits:
            self.timings = {"prompt": time.perf_counter() - t0, "generate": 0.0, "verify": 0.0}
            return base
        count = getattr(self.generator, "count_tokens", estimate_tokens)
        prompt = build_prompt(
            evidence.question,
            hits,
            persona,
            context_window=self.generator.context_window,
            max_answer_tokens=self.max_tokens,
            count=count,
        )
        t1 = time.perf_counter()
        raw = self.generator.generate(
            prompt.messages, max_tokens=self.max_tokens, temperature=self.temperature, on_token=self.on_token
        )
        t2 = time.perf_counter()
        log.debug("model reply (unverified): %r", raw)
        checked = verify(raw, prompt, self.embed, mode=self.unsupported, still_there=evidence.still_there)
        self.timings = {"prompt": t1 - t0, "generate": t2 - t1, "verify": time.perf_counter() - t2}
        self.last_prompt, self.last_raw = prompt, raw
        base.sentences = checked.sentences
        if checked.abstained:
            return base
        if self.unsupported == "remove":
            text = team_first(checked, prompt, evidence.team_searched)
        else:
            text = checked.text
        if title:
            n = len({c.path for c in checked.citations})
            text = f"**{title}** · {n} source{'s' if n != 1 else ''} in the knowledge base\n\n{text}"
        base.answer, base.abstained, base.citations, base.nearest = text, False, checked.citations, []
        return base


def team_first(checked: Verified, prompt: Prompt, team_searched: bool = True) -> str:
    """The verified sentences, those citing the team's own sources first, then general guidance from the
    resources under its label; when none cites the team, the answer says the workspace has nothing on it
    (or, when the filters left the team's sources out, that they were not searched)."""
    kinds = {c.id: c.url is not None or _resource(prompt, c.path) for c in checked.citations}
    shown = [s for s in checked.sentences if s.supported and s.citations]
    team = [s for s in shown if not all(kinds.get(i, False) for i in s.citations)]
    guidance = [s for s in shown if s not in team]

    def line(s: AnswerSentence) -> str:
        return f"- {s.text} " + "".join(f"[{i}]" for i in s.citations)

    parts = [line(s) for s in team]
    if guidance:
        alone = NO_TEAM_CONTEXT if team_searched else TEAM_FILTERED_OUT
        parts += (["", f"**{GUIDANCE}**"] if team else [alone]) + [line(s) for s in guidance]
    return "\n".join(parts)


def _resource(prompt: Prompt, path: str) -> bool:
    return any(h.path == path and h.source_type == "resource" for h in prompt.context.values())
