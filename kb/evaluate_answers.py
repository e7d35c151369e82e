"""Answer evaluation: how well ``kb ask`` answers a labelled question set (``kb eval --answers FILE``).

Each line of the file is one question with its labels::

    {"question": "What's the right caching strategy?", "persona": "backend-engineer", "kind": "consult",
     "answer_sections": [".workos/context/tech-stack.md#Caching strategy"],
     "team": [".workos/context/tech-stack.md#Caching strategy",
              ".workos/context/architecture-decisions.md#ADR-008: Cache-aside with Redis"],
     "resources": [".workos/resources/github.com-donnemartin-system-design-primer/README.md#Cache"],
     "facts": ["cache-aside", "TTL", "deletes the affected cache keys|deletion of cache keys"],
     "split": "tune"}

A label is ``path`` or ``path#heading``: the path may be a shell glob, and the heading matches any part of a
chunk's heading breadcrumb except the document's title (a label naming the title matches only the text before
the first heading). ``team``: the workspace sections that hold the team's answer (``answer_sections``: the
one(s) a search must find); ``resources``: the sections of the recommended resources that are relevant;
``facts``: what a good answer states (``a|b``: either wording). ``split``: ``tune`` or ``report``.

Metrics, per split and overall:

* **leads with team context** — of the questions with team labels, the share whose first two shown sentences
  cite a labelled team section;
* **flags no team context** — of the questions without, the share whose answer says the workspace has nothing;
* **sentence precision** — shown sentences citing a labelled (team or resource) section, over all shown;
* **key-fact recall** — the mean share of a question's facts the answer states;
* **fragments** — shown sentences that cannot stand alone (dangling colon, no sentence end, bare link, lost
  link text, a line that starts mid-sentence, markup debris), counted by rules of this module's own;
* **supported** — shown sentences whose every cited quote is at its lines of the file *and* holds at least
  60 % of the sentence's content words and all its numbers (checked here, independently of kb's verifier);
* **length** — sentences (a list with its introduction counts as one) and words per answer;
* **retrieval** — for questions with ``answer_sections``: hit@k and MRR of ``kb search`` on them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import DatasetError
from kb.models import Answer, Hit
from kb.prompts import NO_TEAM_CONTEXT

Ask = Callable[[str, str | None], Answer]  # (question, persona) -> answer
Search = Callable[[str, int], list[Hit]]  # (query, k) -> hits
SPLITS = ("tune", "report")


@dataclass
class Labelled:
    question: str
    persona: str | None = None
    kind: str = ""
    answer_sections: list[str] = field(default_factory=list)
    team: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    split: str = "report"


def read_answer_set(path: str | os.PathLike[str]) -> list[Labelled]:
    """The labelled questions of a JSONL file (see the module docstring)."""
    file = Path(path).expanduser()
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"Cannot read {file}: {exc.strerror or exc}.") from None
    out = []
    names = set(Labelled.__dataclass_fields__)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{file} line {n} is not JSON ({exc.msg}).") from None
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise DatasetError(
                f'{file} line {n}: expected {{"question": "...", "team": [...], "facts": [...]}}.'
            )
        unknown = set(item) - names
        if unknown:
            raise DatasetError(f"{file} line {n}: unknown field(s) {', '.join(sorted(unknown))}.")
        if item.get("split", "report") not in SPLITS:
            raise DatasetError(f"{file} line {n}: split must be one of {', '.join(SPLITS)}.")
        out.append(Labelled(**item))
    if not out:
        raise DatasetError(f"{file} holds no questions.")
    return out


def label_matches(label: str, path: str, heading: str) -> bool:
    """Whether a chunk at ``path`` under ``heading`` (a breadcrumb) is in the labelled section."""
    want_path, _, want_heading = label.partition("#")
    if not fnmatch.fnmatchcase(path, want_path.strip()):
        return False
    if not want_heading:
        return True
    parts = [p.strip().lower() for p in heading.split("›")]
    parts = parts[1:] if len(parts) > 1 else parts
    return want_heading.strip().lower() in parts


# --- the independent checks -------------------------------------------------------------------------------
_STOP = set(
    "a an the and or but if then than that this these those is are was were be been being do does did has "
    "have "
    "had of in on at to for from by with as into it its we our you your they their not no can could should "
    "would will may might must so such also which who what when where why how all any each more most other "
    "some only own same very just there here per via up out".split()
)
_END = re.compile(r"[.!?](?:[\"'”’)\]*_`]*)$")


def _words(text: str) -> set[str]:
    return {
        w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP and (len(w) > 2 or w.isdigit())
    }


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in re.findall(r"\d+(?:[.,]\d+)*", text)}


def fragment_reason(text: str) -> str | None:
    """Why a shown sentence is a fragment (None when it stands alone). A sentence introducing a list is
    judged with its items (``"intro:\\n- item\\n- item"``)."""
    first, *items = text.split("\n")
    first = first.strip()
    plain = re.sub(r"`[^`]*`", "code", first)  # code spans (``text()``) are not markup debris
    if items and not all(i.strip().startswith("- ") and len(i.strip()) > 2 for i in items):
        return "list items without markers"
    if re.search(r"\]\(|\[[^\]]*\]\(", plain):
        return "raw link markup"
    if re.search(r"\(\s*\)|\b(?:the|a|an|of|to|see)\s+\(\s*https?://", plain, re.I):
        return "link text lost"
    bare = re.sub(r"\(?https?://\S+\)?", " ", plain)
    if len(re.findall(r"[A-Za-z]{2,}", bare)) < 3:
        return "bare link or too short"
    if first.endswith(":") and not items:
        return "dangling colon"
    if not items and not _END.search(first):
        return "heading-like (no sentence end)"
    if first[:1].islower() or first[:1] in ",;:)]}":
        return "starts mid-sentence"
    if first.count("`") % 2 or first.count("**") % 2:
        return "markup debris"
    return None


def _quote_at(root: Path, path: str, start: int, end: int, quote: str, cache: dict[str, list[str]]) -> bool:
    if path not in cache:
        try:
            cache[path] = re.split(r"\r\n|\n|\r", (root / path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            cache[path] = []
    window = " ".join(" ".join(cache[path][start - 1 : end]).split())
    return bool(window) and " ".join(quote.split()) in window


# --- scoring ----------------------------------------------------------------------------------------------
@dataclass
class AnswerScore:
    question: str
    split: str
    kind: str
    abstained: bool
    sentences: int
    words: int
    leads: bool | None  # None: the question has no team label
    flags_no_team: bool | None  # None: the question has team labels
    precise: int
    facts_found: list[str]
    facts_missed: list[str]
    fragments: list[dict[str, str]]
    unsupported: list[str]
    seconds: float
    answer: str = ""

    @property
    def fact_recall(self) -> float:
        n = len(self.facts_found) + len(self.facts_missed)
        return len(self.facts_found) / n if n else 1.0


def score_answer(item: Labelled, answer: Answer, root: Path, seconds: float = 0.0) -> AnswerScore:
    """The metrics of one answer against its labels (see the module docstring)."""
    cites = {c.id: c for c in answer.citations}
    shown = [] if answer.abstained else [s for s in answer.sentences if s.supported and s.citations]
    team_labels, all_labels = item.team, item.team + item.resources

    def in_labels(sentence_ids: list[int], labels: list[str]) -> bool:
        return any(
            i in cites and any(label_matches(lb, cites[i].path, cites[i].heading) for lb in labels)
            for i in sentence_ids
        )

    leads: bool | None = None
    if team_labels:
        first = shown[:2]
        leads = bool(first) and all(in_labels(s.citations, team_labels) for s in first)
    text = "\n".join(s.text for s in shown)
    found = [f for f in item.facts if any(a.strip().lower() in text.lower() for a in f.split("|"))]
    files: dict[str, list[str]] = {}
    unsupported = []
    for s in shown:
        quotes = [cites[i] for i in s.citations if i in cites]
        at = all(_quote_at(root, c.path, c.start_line, c.end_line, c.quote, files) for c in quotes)
        joined = " ".join(c.quote for c in quotes)
        words = _words(s.text)
        covered = len(words & _words(joined)) / len(words) if words else 1.0
        if not (at and quotes and covered >= 0.6 and _numbers(s.text) <= _numbers(joined)):
            unsupported.append(s.text)
    fragments = [{"text": s.text, "reason": r} for s in shown if (r := fragment_reason(s.text))]
    return AnswerScore(
        question=item.question,
        split=item.split,
        kind=item.kind,
        abstained=answer.abstained,
        sentences=len(shown),
        words=sum(len(s.text.split()) for s in shown),
        leads=leads,
        flags_no_team=None if team_labels else (not answer.abstained and NO_TEAM_CONTEXT in answer.answer),
        precise=sum(in_labels(s.citations, all_labels) for s in shown),
        facts_found=found,
        facts_missed=[f for f in item.facts if f not in found],
        fragments=fragments,
        unsupported=unsupported,
        seconds=round(seconds, 3),
        answer=answer.answer,
    )


@dataclass
class AnswersSummary:
    questions: int
    answered: int
    leads_with_team_context: float | None
    flags_no_team_context: float | None
    sentence_precision: float
    key_fact_recall: float
    fragments: int
    supported: float
    sentences_median: float
    sentences_mean: float
    words_median: float
    retrieval_hit_at_k: float | None = None
    retrieval_mrr: float | None = None
    seconds_median: float = 0.0


def summarize(scores: list[AnswerScore], ranks: list[int | None] | None = None) -> AnswersSummary:
    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    shown = sum(s.sentences for s in scores)
    answered = [s for s in scores if not s.abstained]
    return AnswersSummary(
        questions=len(scores),
        answered=len(answered),
        leads_with_team_context=mean([float(bool(s.leads)) for s in scores if s.leads is not None]),
        flags_no_team_context=mean(
            [float(bool(s.flags_no_team)) for s in scores if s.flags_no_team is not None]
        ),
        sentence_precision=round(sum(s.precise for s in scores) / shown, 4) if shown else 0.0,
        key_fact_recall=mean([s.fact_recall for s in scores]) or 0.0,
        fragments=sum(len(s.fragments) for s in scores),
        supported=round(1 - sum(len(s.unsupported) for s in scores) / shown, 4) if shown else 0.0,
        sentences_median=statistics.median([s.sentences for s in answered]) if answered else 0.0,
        sentences_mean=round(statistics.mean([s.sentences for s in answered]), 2) if answered else 0.0,
        words_median=statistics.median([s.words for s in answered]) if answered else 0.0,
        retrieval_hit_at_k=mean([float(r is not None) for r in ranks]) if ranks else None,
        retrieval_mrr=mean([1 / r if r else 0.0 for r in ranks]) if ranks else None,
        seconds_median=round(statistics.median([s.seconds for s in scores]), 3) if scores else 0.0,
    )


@dataclass
class AnswersReport:
    questions_file: str
    backend: str
    k: int
    splits: dict[str, AnswersSummary]
    results: list[AnswerScore]
    ranks: list[int | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "questions_file": self.questions_file,
            "backend": self.backend,
            "search_k": self.k,
            **{name: asdict(s) for name, s in self.splits.items()},
            "results": [
                {**asdict(r), "retrieval_rank": rank}
                for r, rank in zip(self.results, self.ranks, strict=True)
            ],
        }


def search_rank(search: Search, item: Labelled, k: int) -> int | None:
    """1-based rank of the first hit in one of the question's ``answer_sections`` (None: not in the top k)."""
    for i, h in enumerate(search(item.question, k)):
        if any(label_matches(lb, p, h.heading) for lb in item.answer_sections for p in (h.path, *h.also_in)):
            return i + 1
    return None


def evaluate_answers(
    ask: Ask,
    search: Search,
    path: str | os.PathLike[str],
    root: Path,
    *,
    backend: str = "extractive",
    k: int = 8,
) -> AnswersReport:
    """Ask every question of the labelled set at ``path`` and score the answers (see the module docstring)."""
    items = read_answer_set(path)
    scores, ranks = [], []
    for item in items:
        t0 = time.perf_counter()
        answer = ask(item.question, item.persona)
        scores.append(score_answer(item, answer, root, time.perf_counter() - t0))
        ranks.append(search_rank(search, item, k) if item.answer_sections else None)

    def part(names: tuple[str, ...]) -> AnswersSummary:
        chosen = [i for i, it in enumerate(items) if it.split in names]
        return summarize(
            [scores[i] for i in chosen], [ranks[i] for i in chosen if items[i].answer_sections] or None
        )

    splits = {"tune": part(("tune",)), "report": part(("report",)), "all": part(SPLITS)}
    return AnswersReport(str(path), backend, k, splits, scores, ranks)
