"""Markdown-aware chunking with exact line ranges.

A document is parsed into blocks (headings, fenced code, tables, list items, paragraphs). Blocks are packed
into chunks that never cross a heading, never split a code block or table that fits, and never exceed the
model's token window once the heading breadcrumb is prepended (the breadcrumb is what gets embedded together
with the text, so a chunk "knows" where it sits). Each chunk's ``text`` is the verbatim source lines
``start_line..end_line`` (1-based, inclusive), so a citation can always be checked against the file.

Bounded against amplification (4.5 MB of nested blockquotes once became 22,058 chunks, 106 s and 2.5 GB):
leading ``>`` markers are structure, not content (not counted, not embedded); pieces with no letter or digit
are dropped; oversized text is sized and split by :mod:`ingest.splitting` at a cost linear in its size; and a
document may make at most ``max(200, letters and digits / 50)`` chunks (:func:`chunk_cap`), else it is not
indexed ("produces N chunks (cap M)").
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from ingest.errors import LoadError
from ingest.loaders import Document
from ingest.splitting import counts, has_text, sizes, split_block, unquote

CHUNKER_VERSION = "md-5"
MIN_CAP = 200  # chunks any document may make
CHARS_PER_CHUNK = 50  # beyond MIN_CAP: one chunk per this many letters and digits
MAX_TITLE = 200  # characters of a heading kept in the breadcrumb
_NOT_ALNUM = re.compile(r"[\W_]+")

TokenCounter = Callable[[Sequence[str]], list[int]]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_TABLE = re.compile(r"^\s*\|")
_ITEM = re.compile(r"^\s{0,3}(?:[-*+]|\d{1,3}[.)])\s+")
# Lines (in the joined text) that end a paragraph: blank, or starting a fence, heading, table or list item.
_PARA_END = re.compile(
    r"^(?:[^\S\n]*$| {0,3}(?:`{3,}|~{3,}|#{1,6}[ \t])|[^\S\n]*\||[^\S\n]{0,3}(?:[-*+]|\d{1,3}[.)])[^\S\n]+)",
    re.M,
)
_NOT_TABLE = re.compile(r"^(?![^\S\n]*\|)", re.M)


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


class _Lines:
    """The lines joined once, so that "the next line that ..." is one regex search in C, not a Python loop
    over lines (2.25 M one-character lines took seconds)."""

    def __init__(self, lines: list[str]):
        self.n = len(lines)
        self.text = "\n".join(lines)
        self._acc = list(accumulate(map(len, lines), initial=0))  # line i starts at _acc[i] + i

    def find(self, pattern: re.Pattern[str], first: int) -> int:
        """The first line at or after ``first`` where the MULTILINE ``pattern`` matches; ``n`` if none."""
        if first >= self.n:
            return self.n
        m = pattern.search(self.text, self._acc[first] + first)
        if m is None:
            return self.n
        return bisect.bisect_right(range(self.n), m.start(), key=lambda i: self._acc[i] + i) - 1


def parse_blocks(lines: list[str], first: int = 0) -> list[Block]:
    blocks: list[Block] = []
    i = first
    n = len(lines)
    index = _Lines(lines)
    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)
            closing = re.compile(
                r"^ {0,3}" + re.escape(marker[0]) + "{" + str(len(marker)) + r",}[^\S\n]*$", re.M
            )
            j = index.find(closing, i + 1)
            end = min(j, n - 1)
            while end > i and not lines[end].strip():  # an unclosed fence ends at its last text line
                end -= 1
            blocks.append(Block("code", i, end))
            i = j + 1
            continue
        heading = _HEADING.match(line)
        if heading:
            title = re.sub(r"[*_`]+", "", heading.group(2)).strip()[:MAX_TITLE]
            blocks.append(Block("heading", i, i, level=len(heading.group(1)), title=title))
            i += 1
            continue
        if _TABLE.match(line):
            j = index.find(_NOT_TABLE, i + 1) - 1
            blocks.append(Block("table", i, j))
            i = j + 1
            continue
        kind = "item" if _ITEM.match(line) else "para"
        j = index.find(_PARA_END, i + 1) - 1
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
    doc_title = (title or _first_h1(blocks) or "")[:MAX_TITLE]
    cap = chunk_cap(doc.text)
    block_tokens = sizes(count_tokens, [unquote("\n".join(lines[b.start : b.end + 1])) for b in blocks])

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
    crumb_tokens = counts(count_tokens, crumbs)
    chunks: list[Chunk] = []
    for (heading_path, idxs), crumb, ctoks in zip(sections, crumbs, crumb_tokens, strict=True):
        budget = max(16, max_tokens - ctoks - 1)  # the breadcrumb's specials are shared; 1 for the newline
        pieces: list[tuple[int, int, int, int]] = []  # (start line, start col, end line, end col excl.)
        group: list[int] = []
        used = 0
        for idx in idxs:
            block = blocks[idx]
            toks = block_tokens[idx]
            if toks > budget:
                if group:
                    pieces.append(_span(blocks, group, lines))
                    group, used = [], 0
                if not has_text(unquote("\n".join(lines[block.start : block.end + 1]))):
                    continue  # all its pieces would be dropped: not split (4.5 MB of "- - -")
                pieces.extend(
                    split_block(lines, block.start, block.end, count_tokens, budget, block.kind != "code")
                )
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
            body = unquote(text)
            if not has_text(body):  # only markers, rules, punctuation: nothing to find or quote
                continue
            if len(chunks) >= 4 * cap:  # stop early: the count is already a refusal
                raise LoadError(f"produces more than {len(chunks)} chunks (cap {cap})")
            chunks.append(
                Chunk(
                    text=text,
                    embed_text=f"{crumb}\n{body}" if crumb else body,
                    start_line=sl + 1,
                    end_line=el + 1,
                    heading_path=list(heading_path),
                    page=_page_of(doc.page_starts, sl + 1),
                )
            )
    if len(chunks) > cap:
        raise LoadError(f"produces {len(chunks)} chunks (cap {cap})")
    chunks = _enforce_limit(chunks, count_tokens, max_tokens)
    if len(chunks) > cap:
        raise LoadError(f"produces {len(chunks)} chunks (cap {cap})")
    for ordinal, chunk in enumerate(chunks):
        chunk.ordinal = ordinal
    return chunks


def chunk_cap(text: str) -> int:
    """The most chunks a document may make: ``max(200, letters and digits // 50)``. Ordinary prose makes one
    chunk per ~800 letters and digits; a document far below one per 50 is built to amplify."""
    letters_and_digits = len(_NOT_ALNUM.sub("", text))
    return max(MIN_CAP, letters_and_digits // CHARS_PER_CHUNK)


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


def _enforce_limit(chunks: list[Chunk], count_tokens: TokenCounter, max_tokens: int) -> list[Chunk]:
    """Token counts of concatenations can exceed the sum of parts by a little; trim the rare offenders."""
    out: list[Chunk] = []
    for chunk, n in zip(chunks, counts(count_tokens, [c.embed_text for c in chunks]), strict=True):
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
            crumb = chunk.embed_text[: len(chunk.embed_text) - len(unquote(chunk.text))]
            for part in (first, second):
                part.embed_text = crumb + unquote(part.text)
            halves = [p for p in (first, second) if has_text(unquote(p.text))]
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
