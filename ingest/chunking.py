"""Markdown-aware chunking with exact line ranges.

A document is parsed into blocks (headings, fenced code, tables, list items, paragraphs). Blocks are packed
into chunks that never cross a heading, never split a code block or table that fits, and never exceed the
model's token window once the heading breadcrumb is prepended (the breadcrumb is what gets embedded together
with the text, so a chunk "knows" where it sits). Each chunk's ``text`` is the verbatim source lines
``start_line..end_line`` (1-based, inclusive), so a citation can always be checked against the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ingest.loaders import Document

CHUNKER_VERSION = "md-4"

TokenCounter = Callable[[Sequence[str]], list[int]]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_TABLE = re.compile(r"^\s*\|")
_ITEM = re.compile(r"^\s{0,3}(?:[-*+]|\d{1,3}[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[*`])")


@dataclass
class Block:
    kind: str  # heading | code | table | item | para
    start: int  # 0-based index into lines
    end: int  # inclusive
    level: int = 0
    title: str = ""


@dataclass
class Chunk:
    text: str
    embed_text: str
    start_line: int
    end_line: int
    heading_path: list[str] = field(default_factory=list)
    ordinal: int = 0
    page: int | None = None

    @property
    def heading(self) -> str:
        return " › ".join(self.heading_path)


def split_lines(text: str) -> list[str]:
    """Lines as an editor numbers them (``\\n``, ``\\r\\n`` or ``\\r``), without terminators."""
    return re.split(r"\r\n|\n|\r", text)


def parse_blocks(lines: list[str], first: int = 0) -> list[Block]:
    blocks: list[Block] = []
    i = first
    n = len(lines)
    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)
            j = i + 1
            closing = re.compile(r"^ {0,3}" + re.escape(marker[0]) + "{" + str(len(marker)) + r",}\s*$")
            while j < n and not closing.match(lines[j]):
                j += 1
            end = min(j, n - 1)
            while end > i and not lines[end].strip():  # an unclosed fence ends at its last text line
                end -= 1
            blocks.append(Block("code", i, end))
            i = j + 1
            continue
        heading = _HEADING.match(line)
        if heading:
            title = re.sub(r"[*_`]+", "", heading.group(2)).strip()
            blocks.append(Block("heading", i, i, level=len(heading.group(1)), title=title))
            i += 1
            continue
        if _TABLE.match(line):
            j = i
            while j + 1 < n and _TABLE.match(lines[j + 1]):
                j += 1
            blocks.append(Block("table", i, j))
            i = j + 1
            continue
        kind = "item" if _ITEM.match(line) else "para"
        j = i
        while j + 1 < n:
            nxt = lines[j + 1]
            if not nxt.strip() or any(p.match(nxt) for p in (_FENCE, _HEADING, _TABLE, _ITEM)):
                break
            j += 1
        blocks.append(Block(kind, i, j))
        i = j + 1
    return blocks


def chunk_document(
    doc: Document,
    count_tokens: TokenCounter,
    max_tokens: int = 256,
    title: str | None = None,
) -> list[Chunk]:
    """Split ``doc`` into chunks of at most ``max_tokens`` tokens (as counted by ``count_tokens``, which must
    include the model's special tokens), breadcrumb included."""
    lines = split_lines(doc.text)
    blocks = parse_blocks(lines, doc.body_start_line - 1)
    if not blocks:
        return []
    doc_title = title or _first_h1(blocks) or ""
    block_tokens = count_tokens(["\n".join(lines[b.start : b.end + 1]) for b in blocks])

    # Group blocks into sections (a heading and what follows it until the next heading).
    sections: list[tuple[list[str], list[int]]] = []  # (heading path, block indexes)
    stack: list[tuple[int, str]] = []
    current: list[int] = []
    path: list[str] = []
    pending_headings: list[int] = []
    for idx, block in enumerate(blocks):
        if block.kind == "heading":
            if current:
                sections.append((path, current))
                current = []
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.title))
            path = [t for _, t in stack]
            pending_headings.append(idx)
            continue
        if pending_headings:
            current.extend(pending_headings)
            pending_headings = []
        current.append(idx)
    if pending_headings:
        current.extend(pending_headings)
    if current:
        sections.append((path, current))

    crumbs = [_breadcrumb(doc_title, p) for p, _ in sections]
    crumb_tokens = count_tokens(crumbs)
    chunks: list[Chunk] = []
    for (heading_path, idxs), crumb, ctoks in zip(sections, crumbs, crumb_tokens, strict=True):
        budget = max(16, max_tokens - ctoks - 1)  # the breadcrumb's specials are shared; 1 for the newline
        pieces: list[tuple[int, int, int, int]] = []  # (start line, start col, end line, end col excl.)
        group: list[int] = []
        used = 0
        for idx in idxs:
            block = blocks[idx]
            toks = block_tokens[idx] - 2
            if toks > budget:
                if group:
                    pieces.append(_span(blocks, group, lines))
                    group, used = [], 0
                pieces.extend(_split_block(block, lines, count_tokens, budget))
                continue
            if group and used + toks + 1 > budget:
                pieces.append(_span(blocks, group, lines))
                group, used = [], 0
            group.append(idx)
            used += toks + 1
        if group:
            pieces.append(_span(blocks, group, lines))
        for sl, sc, el, ec in pieces:
            text = _extract(lines, sl, sc, el, ec)
            if not text.strip():
                continue
            chunks.append(
                Chunk(
                    text=text,
                    embed_text=f"{crumb}\n{text}" if crumb else text,
                    start_line=sl + 1,
                    end_line=el + 1,
                    heading_path=list(heading_path),
                    page=_page_of(doc.page_starts, sl + 1),
                )
            )
    chunks = _enforce_limit(chunks, count_tokens, max_tokens)
    for ordinal, chunk in enumerate(chunks):
        chunk.ordinal = ordinal
    return chunks


def _first_h1(blocks: list[Block]) -> str | None:
    for b in blocks:
        if b.kind == "heading" and b.level == 1:
            return b.title
    return None


def _breadcrumb(title: str, path: list[str]) -> str:
    parts = list(path)
    if title and (not parts or parts[0] != title):
        parts.insert(0, title)
    return " › ".join(parts)


def _span(blocks: list[Block], group: list[int], lines: list[str]) -> tuple[int, int, int, int]:
    first, last = blocks[group[0]], blocks[group[-1]]
    return first.start, 0, last.end, len(lines[last.end])


def _extract(lines: list[str], sl: int, sc: int, el: int, ec: int) -> str:
    if sl == el:
        return lines[sl][sc:ec]
    return "\n".join([lines[sl][sc:], *lines[sl + 1 : el], lines[el][:ec]])


def _split_block(
    block: Block, lines: list[str], count_tokens: TokenCounter, budget: int
) -> list[tuple[int, int, int, int]]:
    """Split an oversized block: by lines first (code, tables, multi-line text), then by sentences, then
    words."""
    units: list[tuple[int, int, int, int]] = []
    for ln in range(block.start, block.end + 1):
        if lines[ln].strip():
            units.append((ln, 0, ln, len(lines[ln])))
    unit_tokens = count_tokens([_extract(lines, *u) for u in units])
    fine: list[tuple[tuple[int, int, int, int], int]] = []
    for unit, toks in zip(units, unit_tokens, strict=True):
        if toks - 2 <= budget:
            fine.append((unit, toks - 2))
            continue
        ln = unit[0]
        for sc, ec in _split_line(lines[ln], count_tokens, budget):
            fine.append(((ln, sc, ln, ec), budget))
    pieces: list[tuple[int, int, int, int]] = []
    cur: tuple[int, int, int, int] | None = None
    used = 0
    for unit, toks in fine:
        if cur is not None and used + toks + 1 <= budget and unit[0] != cur[2]:
            cur = (cur[0], cur[1], unit[2], unit[3])
            used += toks + 1
        else:
            if cur is not None:
                pieces.append(cur)
            cur, used = unit, toks
    if cur is not None:
        pieces.append(cur)
    return pieces


def _split_line(line: str, count_tokens: TokenCounter, budget: int) -> list[tuple[int, int]]:
    """Column ranges of ``line`` that each fit ``budget`` tokens: sentence boundaries first, then words."""
    bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(line)] + [len(line)]
    sentences = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1) if bounds[i] < bounds[i + 1]]
    toks = count_tokens([line[a:b] for a, b in sentences])
    units: list[tuple[int, int, int]] = []
    for (a, b), t in zip(sentences, toks, strict=True):
        if t - 2 <= budget:
            units.append((a, b, t - 2))
        else:
            units.extend(_split_words(line, a, b, count_tokens, budget))
    out: list[tuple[int, int]] = []
    start, end, used = units[0][0], units[0][1], units[0][2]
    for a, b, t in units[1:]:
        if used + t <= budget:
            end, used = b, used + t
        else:
            out.append((start, end))
            start, end, used = a, b, t
    out.append((start, end))
    return out


def _split_words(
    line: str, a: int, b: int, count_tokens: TokenCounter, budget: int
) -> list[tuple[int, int, int]]:
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+\s*", line[a:b])]
    toks = count_tokens([line[a + s : a + e] for s, e in words])
    out: list[tuple[int, int, int]] = []
    start = end = None
    used = 0
    for (s, e), t in zip(words, toks, strict=True):
        if t - 2 > budget:  # one run without spaces over the window (minified JSON, a long URL): cut it every
            if start is not None:  # `budget` characters (a token spans at least one), never merged back
                out.append((start, end, used))  # type: ignore[arg-type]
            out.extend((p, min(p + budget, a + e), budget) for p in range(a + s, a + e, budget))
            start, end, used = None, None, 0
            continue
        t = min(t - 2, budget)
        if start is not None and used + t <= budget:
            end, used = a + e, used + t
        else:
            if start is not None:
                out.append((start, end, used))  # type: ignore[arg-type]
            start, end, used = a + s, a + e, t
    if start is not None:
        out.append((start, end, used))  # type: ignore[arg-type]
    return out


def _enforce_limit(chunks: list[Chunk], count_tokens: TokenCounter, max_tokens: int) -> list[Chunk]:
    """Token counts of concatenations can exceed the sum of parts by a little; trim the rare offenders."""
    counts = count_tokens([c.embed_text for c in chunks])
    out: list[Chunk] = []
    for chunk, n in zip(chunks, counts, strict=True):
        if n <= max_tokens:
            out.append(chunk)
            continue
        lines = split_lines(chunk.text)
        if len(lines) > 1:
            half = len(lines) // 2
            first = Chunk(
                "\n".join(lines[:half]),
                "",
                chunk.start_line,
                chunk.start_line + half - 1,
                chunk.heading_path,
                page=chunk.page,
            )
            second = Chunk(
                "\n".join(lines[half:]),
                "",
                chunk.start_line + half,
                chunk.end_line,
                chunk.heading_path,
                page=chunk.page,
            )
            crumb = chunk.embed_text[: len(chunk.embed_text) - len(chunk.text)]
            for part in (first, second):
                part.embed_text = crumb + part.text
            halves = [p for p in (first, second) if p.text.strip()]
            out.extend(_enforce_limit(halves, count_tokens, max_tokens))
        else:
            out.append(chunk)  # a single line already split to the word level: the model truncates the tail
    return out


def _page_of(page_starts: list[int], line: int) -> int | None:
    if not page_starts:
        return None
    page = 1
    for number, start in enumerate(page_starts, 1):
        if start <= line:
            page = number
    return page
