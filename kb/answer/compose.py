"""How an extractive answer is put together from scored units: the answer an expert would give.

1. **The team's decision first.** The units of the workspace's own sources (context files, ADRs, PRDs; not
   the recommended resources) that are about the question lead, best first, grouped by section.
2. **Trade-offs** the team's sources state (a reason, a consequence, what was rejected and when to revisit).
3. **Who owns it**: the team directory's line about a service the question names.
4. **The persona's priorities** ("What I Always Consider"): a section only for a unit that is about the
   question *and* about that priority (both bars in :class:`Calibration`).
5. **General guidance from the recommended resources**, labelled as such, each with its URL. When nothing of
   the workspace speaks to the question, the answer says so first (there is no team decision to follow).

The bars and caps of :class:`Calibration` were chosen on the tuning half of the labelled answer set
(``benchmarks/questions/answers.jsonl``, ``benchmarks/bench_answers.py --tune``), never on its report half.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from kb.answer.evidence import Evidence
from kb.answer.units import Unit, render
from kb.models import Answer, AnswerSentence, Citation
from kb.personas import Persona
from kb.prompts import GUIDANCE, NO_TEAM_CONTEXT, OWNER, TEAM_FILTERED_OUT, TRADE_OFFS

#: Units of these source types are general guidance; every other unit is the workspace's own.
RESOURCE = "resource"
#: A stated trade-off: an ADR's reason, consequences or revisit condition, or a sentence naming its cost.
_TRADE = re.compile(
    r"^\*\*(?:reasons?|consequences?|when to revisit|trade-?offs?|downsides?|drawbacks?)\b[^*]{0,40}:\*\*|"
    r"\b(?:trade-?offs?|downsides?|drawbacks?|at the (?:cost|expense) of|reconsidered|revisit(?:ed)?)\b",
    re.I,
)
_OWN = re.compile(r"\b(?:own(?:s|er|ers|ing|ed)?|on-call|secondary|primary)\b", re.I)


@dataclass(frozen=True)
class Calibration:
    """The bars and caps of an extractive answer (cosine similarities; see the module docstring)."""

    lead_min: float = (
        0.45  # a workspace section leads when its best unit scores this much (Candidate.lead_score)
    )
    section_gap: float = 0.05  # ... and scores within this of the best section
    retrieval_weight: float = 0.25  # a section's score: its best unit's, plus this times its retrieval score
    lead_sections: int = 3
    unit_min: float = -1.0  # a lead section's units shown: those at least this close to the question ...
    section_max: int = 5  # ... at most this many of one section
    lead_max: int = 8
    heading_weight: float = (
        0.0  # a unit of a section whose heading names the question's topic gains this much
    )
    heading_floor: float = 0.45  # ... for every unit of cosine(question, heading) above this
    trade_min: float = 0.35
    trade_max: int = 0
    # The team directory's lines about a service the question names (its row, then one line of another
    # section). Not tuned: no question of the tuning half names a service; 2 is a design choice.
    owner_max: int = 2
    aspect_relevance: float = 0.55  # a persona section's unit is about the question ...
    aspect_similarity: float = 0.4  # ... and about the priority
    aspect_sections: int = 2
    per_aspect: int = 1
    resource_min: float = 0.65  # general guidance after the team's decision
    resource_max: int = 3
    alone_min: float = 0.4  # resources answering alone: the workspace has nothing on the question
    alone_max: int = 3
    novelty: float = 0.92  # units closer than this to a chosen one say the same thing


@dataclass
class Candidate:
    unit: Unit
    vector: np.ndarray
    relevance: float  # cosine(question, unit)
    heading: float  # cosine(question, the unit's section heading)
    aspects: dict[str, float] = field(default_factory=dict)  # cosine(priority, unit)
    origin: str = "hits"  # hits | team | aspect:LABEL | owners
    retrieval: float = 0.0  # the retrieval score of the unit's section (0: not among the question's hits)

    @property
    def workspace(self) -> bool:
        return self.unit.hit.source_type != RESOURCE

    @property
    def section(self) -> tuple[str, str]:
        return (self.unit.hit.path, self.unit.hit.heading)

    def score(self, cal: Calibration) -> float:
        """How much the unit is about the question: its own similarity, plus its section heading's."""
        return self.relevance + cal.heading_weight * max(0.0, self.heading - cal.heading_floor)

    def lead_score(self, cal: Calibration) -> float:
        """What makes its section lead: :meth:`score`, plus the section's retrieval score."""
        return self.score(cal) + cal.retrieval_weight * self.retrieval


class _Picker:
    def __init__(self, cands: list[Candidate], cal: Calibration):
        self.cands, self.cal = cands, cal
        self.chosen: list[Candidate] = []

    def free(self, c: Candidate) -> bool:
        """Not chosen, not part of a chosen unit (a list's item) nor holding one, not a near-copy of one."""
        u = c.unit
        for d in self.chosen:
            v = d.unit
            if c is d or float(c.vector @ d.vector) >= self.cal.novelty:
                return False
            if u.hit.path == v.hit.path and u.start_line <= v.end_line and v.start_line <= u.end_line:
                if u.quote in v.quote or v.quote in u.quote:
                    return False
        return True

    def take(self, c: Candidate) -> Candidate:
        self.chosen.append(c)
        return c

    def best(self, pool: list[Candidate], n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for c in sorted(pool, key=lambda c: -c.score(self.cal)):
            if len(out) >= n:
                break
            if self.free(c):
                out.append(self.take(c))
        return out


def entities(question: str) -> list[str]:
    """Services a question names: ``notifications-service``, ``ledger-api``, "the notifications service"."""
    found = re.findall(r"\b[a-z][a-z0-9]*(?:[-_][a-z0-9]+)+\b", question.lower())
    found += [f"{m}-service" for m in re.findall(r"\b([a-z][a-z0-9]+) service\b", question.lower())]
    return list(dict.fromkeys(found))


def compose(
    evidence: Evidence, persona: Persona | None, cands: list[Candidate], cal: Calibration, floor: float = 0.35
) -> Answer | None:
    """The answer from ``cands``; None when nothing clears the bars (``floor``: kb's relevance bar, used when
    nothing clears the lead's and the guidance's own)."""
    pick = _Picker(cands, cal)
    guides = [c for c in cands if not c.workspace and c.origin == "hits"]
    lead = _lead(pick, [c for c in cands if c.workspace and c.lead_score(cal) >= cal.lead_min], cal)
    alone = not lead and any(c.relevance >= cal.alone_min for c in guides)  # only the resources speak
    if not lead and not alone:
        lead = _lead(pick, [c for c in cands if c.workspace and c.relevance >= floor], cal)
    trade = _trade_offs(pick, lead, cands, cal)
    lead = [c for c in lead if not any(c is t for t in trade)]
    owner = _owner(pick, evidence, cands, cal)
    sections: list[tuple[str, list[Candidate]]] = [(TRADE_OFFS, trade), (OWNER, owner)]
    labels = [
        a.label for a in (persona.always_consider if persona else []) if a.label in evidence.aspect_vectors
    ]
    for label in _aspect_order(cands, labels, cal):
        if sum(1 for t, p in sections[2:] if p) >= cal.aspect_sections:
            break
        pool = [
            c
            for c in cands
            if c.relevance >= cal.aspect_relevance
            and c.aspects.get(label, 0.0) >= cal.aspect_similarity
            and max(c.aspects, key=lambda a: c.aspects[a]) == label
        ]
        pool.sort(key=lambda c: -(c.relevance + c.aspects[label]))
        sections.append((label, pick.best(pool, cal.per_aspect)))
    bar = cal.alone_min if alone else cal.resource_min if lead else floor
    guidance = pick.best(
        [c for c in guides if c.relevance >= bar], cal.alone_max if alone else cal.resource_max
    )
    if not pick.chosen:
        return None
    return _render(evidence, persona, lead, sections, guidance)


def _trade_offs(
    pick: _Picker, lead: list[Candidate], cands: list[Candidate], cal: Calibration
) -> list[Candidate]:
    """The trade-offs the team's sources state: those of the lead's sections (a reason, a consequence, when to
    revisit; taken out of the lead, whose decision stays first), then up to ``trade_max`` more from the lead's
    sections and from other workspace sections about the question."""
    if not lead:
        return []
    states = [c for c in lead if _TRADE.search(c.unit.text)]
    if len(states) == len(lead):
        states = states[1:]
    sections = {c.section for c in lead}
    more = pick.best(
        [
            c
            for c in cands
            if c.workspace
            and _TRADE.search(c.unit.text)
            and (c.section in sections or c.relevance >= cal.trade_min)
        ],
        cal.trade_max,
    )
    return states + more


def _lead(pick: _Picker, work: list[Candidate], cal: Calibration) -> list[Candidate]:
    """The best workspace sections (their best unit clears the bar, within ``section_gap`` of the best), each
    with its units that are about the question, best sections first."""
    if not work:
        return []
    best: dict[tuple[str, str], float] = {}
    for c in work:
        best[c.section] = max(best.get(c.section, -1.0), c.lead_score(cal))
    top = max(best.values())
    sections = [sec for sec, v in sorted(best.items(), key=lambda kv: -kv[1]) if v >= top - cal.section_gap]
    out: list[Candidate] = []
    for sec in sections[: cal.lead_sections]:
        pool = [c for c in pick.cands if c.section == sec and c.workspace and c.relevance >= cal.unit_min]
        out += pick.best(pool, min(cal.section_max, cal.lead_max - len(out)))
    order = {sec: i for i, sec in enumerate(sections)}
    return sorted(out, key=lambda c: (order[c.section], c.unit.start_line))


def _aspect_order(cands: list[Candidate], labels: list[str], cal: Calibration) -> list[str]:
    """The persona's priorities, the one with the strongest qualifying evidence first."""

    def strength(label: str) -> float:
        vals = [c.relevance + c.aspects.get(label, 0.0) for c in cands if c.relevance >= cal.aspect_relevance]
        return max(vals, default=0.0)

    return sorted(labels, key=lambda a: -strength(a))


def _owner(pick: _Picker, evidence: Evidence, cands: list[Candidate], cal: Calibration) -> list[Candidate]:
    names = evidence.entities
    if not names:
        return []
    directory = [c for c in cands if c.origin == "owners"]
    # a name the directory knows: the first cell of a table row, or a `code` name in its text
    known = [
        n
        for n in names
        if any(
            (c.unit.kind == "row" and c.unit.text.lower().split(";")[0].split(": ")[-1] == n)
            or f"`{n}`" in c.unit.quote.lower()
            for c in directory
        )
    ]
    pool = [
        c
        for c in directory
        if _OWN.search(c.unit.text + " " + (c.unit.header[1] if c.unit.header else ""))
        and any(n in c.unit.text.lower() or n.replace("-", " ") in c.unit.text.lower() for n in known)
    ]
    pool.sort(key=lambda c: (c.unit.kind != "row", -c.relevance))
    out: list[Candidate] = []
    for c in pool:  # the ownership row first, then lines of other sections (on-call, the team's page)
        if len(out) < cal.owner_max and pick.free(c) and all(c.section != o.section for o in out):
            out.append(pick.take(c))
    return out


def _crumb(heading: str) -> str:
    """A heading breadcrumb as a citation shows it: images and markup attributes dropped from each part."""
    return " › ".join(render(part) for part in heading.split("›"))


def _render(
    evidence: Evidence,
    persona: Persona | None,
    lead: list[Candidate],
    sections: list[tuple[str, list[Candidate]]],
    guidance: list[Candidate],
) -> Answer:
    citations: list[Citation] = []
    cite_id: dict[tuple[str, int, int, str], int] = {}

    def cite(c: Candidate, start: int, end: int, quote: str) -> int:
        key = (c.unit.hit.path, start, end, quote)
        if key not in cite_id:
            cite_id[key] = len(citations) + 1
            h = c.unit.hit
            citations.append(
                Citation(
                    cite_id[key], h.path, start, end, _crumb(h.heading), quote, round(c.relevance, 4), h.url
                )
            )
        return cite_id[key]

    said: list[AnswerSentence] = []

    def say(c: Candidate, url: bool = False) -> str:
        u = c.unit
        ids = [cite(c, u.header[0], u.header[0], u.header[1])] if u.header else []
        ids.append(cite(c, u.start_line, u.end_line, u.quote))
        said.append(AnswerSentence(u.text, ids, True))
        first, *items = u.text.split("\n")
        marks = "".join(f"[{i}]" for i in ids)
        where = f" ({u.hit.url})" if url and u.hit.url else ""
        return "\n".join([f"- {first} {marks}{where}", *(f"  {item}" for item in items)])

    parts: list[str] = []
    everything = lead + [c for _, cs in sections for c in cs] + guidance
    if persona:
        n = len({c.unit.hit.path for c in everything})
        parts += [f"**{persona.title}** · {n} source{'s' if n != 1 else ''} in the knowledge base", ""]
    if lead:
        parts += [say(c) for c in lead]
    elif guidance:  # only the resources speak: say so, then their guidance comes first
        parts.append(NO_TEAM_CONTEXT if evidence.team_searched else TEAM_FILTERED_OUT)
        parts += [say(c, url=True) for c in guidance]
    for label, chosen in sections:
        if chosen:
            parts += ["", f"**{label}**", *(say(c) for c in chosen)]
    if guidance and lead:
        parts += ["", f"**{GUIDANCE}**", *(say(c, url=True) for c in guidance)]
    return Answer(
        sentences=said,
        question=evidence.question,
        persona=persona.name if persona else None,
        answer="\n".join(parts).strip("\n"),
        abstained=False,
        citations=citations,
        persona_title=persona.title if persona else None,
    )
