"""What retrieval hands an answerer (:class:`Evidence`), and chunks cut into quotable sentences.

Both answerers quote from here: :class:`kb.answer.extractive.ExtractiveAnswerer` picks whole sentences of the
retrieved chunks, and :func:`kb.answer.verify.verify` checks a model's sentences against them. Each
:class:`Sentence` keeps the exact lines it occupies, so every citation is line-exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kb.models import Hit

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised vectors, one row each


StillThere = Callable[
    [str, int, int, str], bool
]  # (path, start, end, quote) -> is the quote at those lines now


def _always(path: str, start: int, end: int, quote: str) -> bool:
    return True


@dataclass
class Evidence:
    """What retrieval hands an answerer: the hits for the question; the team's own (context files and PRDs,
    searched on their own so that resources cannot crowd them out); per persona priority its own hits; the
    team directory's hits about a service the question names (``owners``); and ``still_there``, which says
    whether a quote is still at its lines of the file (:mod:`kb.answer.fresh`)."""

    question: str
    hits: list[Hit]
    aspects: dict[str, list[Hit]] = field(default_factory=dict)
    aspect_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    team: list[Hit] = field(default_factory=list)
    owners: list[Hit] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)  # services the question names
    team_searched: bool = True  # False: the filters left every team source out (its silence says nothing)
    still_there: StillThere = _always


@dataclass
class Sentence:
    text: str  # whitespace-normalised, verbatim otherwise
    hit: Hit
    start_line: int
    end_line: int


_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}")
_LIST = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[*`])")
_ABBREV = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|approx|no|fig)\.$", re.I)


def split_paragraph(para: Sequence[tuple[int, str]], min_words: int = 4) -> list[tuple[str, int, int]]:
    """The sentences of a paragraph given as ``(line number, line)`` pairs: ``(text, first line, last line)``,
    whitespace-normalised, a leading list marker removed, sentences under ``min_words`` words left out."""
    out: list[tuple[str, int, int]] = []
    if not para:
        return out
    joined = ""
    offsets: list[tuple[int, int]] = []  # (char offset in joined, line number)
    for ln, text in para:
        if joined:
            joined += "\n"
        offsets.append((len(joined), ln))
        joined += text
    starts = [0]
    for m in _BOUNDARY.finditer(joined):
        if not _ABBREV.search(joined[: m.start() + 1]):
            starts.append(m.end())
    starts.append(len(joined))
    for a, b in zip(starts, starts[1:], strict=False):
        text = " ".join(joined[a:b].split())
        text = _LIST.sub("", text, count=1) if a == 0 else text
        if len(text.split()) < min_words:
            continue
        first = max(ln for off, ln in offsets if off <= a)
        last = max(ln for off, ln in offsets if off <= max(a, b - 1))
        out.append((text, first, last))
    return out


def sentences_of(hit: Hit) -> list[Sentence]:
    """Split a chunk into sentences (and table rows), each with the exact lines it occupies."""
    lines = hit.text.split("\n")
    out: list[Sentence] = []
    in_code = False
    para: list[tuple[int, str]] = []

    def flush() -> None:
        out.extend(Sentence(text, hit, first, last) for text, first, last in split_paragraph(para))
        para.clear()

    for i, line in enumerate(lines):
        ln = hit.start_line + i
        if _FENCE.match(line):
            flush()
            in_code = not in_code
            continue
        if in_code or not line.strip() or _HEADING.match(line):
            flush()
            continue
        if line.lstrip().startswith("|"):
            flush()
            if not _TABLE_SEP.match(line.strip().lstrip("|")):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len([c for c in cells if c]) >= 2 and len(" ".join(cells).split()) >= 3:
                    out.append(Sentence(" ".join(line.split()), hit, ln, ln))
            continue
        if _LIST.match(line):
            flush()
        para.append((ln, line))
    flush()
    return out
