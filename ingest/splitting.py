"""Sizing and splitting text for the chunker, at a cost bounded by the size of the text.

A tokenizer is the expensive part of chunking: tokenizing 4.5 MB of ``-`` in one call takes 46 s and 2.4 GB
with the bundled model's tokenizer, and a chunker that counts every word of a pathological line one by one is
not much better. So, everywhere here:

* a text with no letter or digit is never tokenized: its UTF-8 length is an upper bound of its tokens (every
  tokenizer's token covers at least one byte), which is all that is needed to keep it within the window, and
  the chunker drops pieces that hold no letter or digit anyway;
* a text longer than :data:`EXACT_CHARS` is never tokenized either: it counts as too long and is split
  further (lines, then sentences, then words), so its exact count is never needed;
* a word longer than the budget in bytes is cut into pieces of at most the budget in bytes (no tokenizing);
* texts are tokenized :data:`COUNT_BATCH` at a time and only the counts are kept (memory stays flat);
* leading blockquote markers (``> > >``) are structure, not content: they are neither counted nor embedded
  (:func:`unquote`), and a split line starts after them.

Spans are ``(start line, start column, end line, end column exclusive)``, 0-based, as in
:mod:`ingest.chunking`. Never imports kb.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

TokenCounter = Callable[[Sequence[str]], list[int]]
Span = tuple[int, int, int, int]
T = TypeVar("T")

EXACT_CHARS = 8192  # longer texts are split, never tokenized whole
COUNT_BATCH = 1024  # texts tokenized per call
OVER = 1 << 30  # the size of a text too long to count: it is split further

_ALNUM = re.compile(r"[^\W_]")
_QUOTE = re.compile(r"[ \t]{0,3}>[ \t>]*")
_QUOTED_LINE = re.compile(r"^[ \t]{0,3}>[ \t>]*", re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[*`])")
# A run of whole punctuation words (no letter, digit or underscore), or one word, with the spaces after it.
# Possessive: linear, and no backtracking state kept (the plain form took 930 MB on 4.5 MB of "- - -").
_WORD_OR_RUN = re.compile(r"(?:[^\w\s]++\s++)++|\S+\s*")


def has_text(text: str) -> bool:
    """Does ``text`` hold a letter or digit (of any script)?"""
    return _ALNUM.search(text) is not None


def content_start(line: str) -> int:
    """Column where a line's content starts: after its leading blockquote markers, if any."""
    match = _QUOTE.match(line)
    return match.end() if match else 0


def unquote(text: str) -> str:
    """``text`` without the leading blockquote markers of its lines (what is counted and embedded)."""
    return _QUOTED_LINE.sub("", text) if ">" in text else text


def nbytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def sizes(count_tokens: TokenCounter, texts: Sequence[str]) -> list[int]:
    """Each text's size in tokens, without the model's special tokens: exact for ordinary texts, the UTF-8
    length (an upper bound) for texts without a letter or digit, :data:`OVER` for texts over
    :data:`EXACT_CHARS`."""
    out = [0] * len(texts)
    todo: list[int] = []
    for i, text in enumerate(texts):
        if len(text) > EXACT_CHARS:
            out[i] = OVER
        elif not has_text(text):
            out[i] = nbytes(text)
        else:
            todo.append(i)
    for part in batched(todo, COUNT_BATCH):
        for i, n in zip(part, count_tokens([texts[i] for i in part]), strict=True):
            out[i] = n - 2
    return out


def counts(count_tokens: TokenCounter, texts: Sequence[str]) -> list[int]:
    """Token counts with the special tokens (as ``count_tokens`` gives them), batched; :data:`OVER` for a
    text over :data:`EXACT_CHARS`."""
    return [n if n == OVER else n + 2 for n in sizes(count_tokens, texts)]


def cut(text: str, start: int, end: int, budget: int) -> Iterator[tuple[int, int, int]]:
    """``text[start:end]`` cut into pieces of at most ``budget`` bytes: ``(start, end, bytes)``."""
    step = budget if text[start:end].isascii() else max(1, budget // 4)
    for p in range(start, end, step):
        q = min(p + step, end)
        yield p, q, nbytes(text[p:q])


def pack(units: Iterable[tuple[int, int, int]], budget: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end, tokens)`` units of one line merged into column ranges of at most
    ``budget`` tokens."""
    out: list[tuple[int, int]] = []
    start = end = used = -1
    for a, b, t in units:
        if start >= 0 and used + t <= budget:
            end, used = b, used + t
        else:
            if start >= 0:
                out.append((start, end))
            start, end, used = a, b, t
    if start >= 0:
        out.append((start, end))
    return out


def split_block(
    lines: list[str], first: int, last: int, count_tokens: TokenCounter, budget: int, quoted: bool = True
) -> list[Span]:
    """Split lines ``first..last`` (an oversized block) into spans of at most ``budget`` tokens: by lines,
    then (a line that is too long) by sentences, then words. ``quoted``: leading ``>`` markers are structure
    (not in code blocks)."""
    search, quote = _ALNUM.search, _QUOTE.match
    fine: list[list[Any]] = []  # [span, size] of each line (runs of lines without text merged), in order
    pending: list[int] = []  # indexes in `fine` of lines with text, counted COUNT_BATCH at a time
    run_size = -1  # size of the run of lines without text at the end of `fine` (-1: none)

    def count_pending() -> None:
        texts = [lines[fine[i][0][0]][fine[i][0][1] :] for i in pending]
        for i, t in zip(pending, sizes(count_tokens, texts), strict=True):
            fine[i][1] = t
        pending.clear()

    for ln in range(first, last + 1):
        line = lines[ln]
        col = (m.end() if (m := quote(line)) else 0) if quoted else 0
        content = line[col:] if col else line
        if not content.strip():
            continue
        if search(content) is None:  # no text: sized by its bytes, never tokenized, merged with its kind
            size = nbytes(content)
            if size <= budget:
                if run_size >= 0 and run_size + size + 1 <= budget:
                    span = fine[-1][0]
                    fine[-1] = [(span[0], span[1], ln, len(line)), run_size + size + 1]
                    run_size += size + 1
                else:
                    fine.append([(ln, col, ln, len(line)), size])
                    run_size = size
                continue
            fine.append([(ln, col, ln, len(line)), OVER])
        else:
            pending.append(len(fine))
            fine.append([(ln, col, ln, len(line)), 0])
            if len(pending) == COUNT_BATCH:
                count_pending()
        run_size = -1
    count_pending()
    units: list[tuple[Span, int]] = []
    for span, t in fine:
        ln, col = span[0], span[1]
        if t <= budget:
            units.append((span, t))
        else:
            parts = split_line(lines[ln], count_tokens, budget, col)
            units.extend(((ln, a, ln, b), budget) for a, b in parts)
    pieces: list[Span] = []
    cur: Span | None = None
    used = 0
    for unit, t in units:
        if cur is not None and used + t + 1 <= budget and unit[0] != cur[2]:
            cur = (cur[0], cur[1], unit[2], unit[3])
            used += t + 1
        else:
            if cur is not None:
                pieces.append(cur)
            cur, used = unit, t
    if cur is not None:
        pieces.append(cur)
    return pieces


def split_line(line: str, count_tokens: TokenCounter, budget: int, start: int = 0) -> list[tuple[int, int]]:
    """Column ranges of ``line`` (from ``start``) that each fit ``budget`` tokens: sentence boundaries first,
    then words."""

    def sentences() -> Iterator[tuple[int, int]]:
        prev = start
        for m in _SENTENCE_END.finditer(line, start):
            if m.end() > prev:
                yield prev, m.end()
                prev = m.end()
        if len(line) > prev:
            yield prev, len(line)

    def units() -> Iterator[tuple[int, int, int]]:
        for part in batched(sentences(), COUNT_BATCH):
            toks = sizes(count_tokens, [line[a:b] for a, b in part])
            for (a, b), t in zip(part, toks, strict=True):
                if t <= budget:
                    yield a, b, t
                else:
                    yield from split_words(line, a, b, count_tokens, budget)

    return pack(units(), budget)


def split_words(
    line: str, a: int, b: int, count_tokens: TokenCounter, budget: int
) -> Iterator[tuple[int, int, int]]:
    """``line[a:b]`` as ``(start, end, tokens)`` units of at most ``budget`` tokens: words (with their
    trailing spaces), runs of words without letters or digits, and pieces of words too long for the window
    (cut every ``budget`` bytes: a token spans at least one)."""
    for part in batched(_WORD_OR_RUN.finditer(line, a, b), COUNT_BATCH):
        spans = [m.span() for m in part]
        words = [line[s:e] for s, e in spans]
        toks = sizes(count_tokens, [w if nbytes(w) <= budget else "" for w in words])
        for (s, e), word, t in zip(spans, words, toks, strict=True):
            if nbytes(word) > budget:
                yield from cut(line, s, e, budget)
            else:
                yield s, e, min(t, budget)
