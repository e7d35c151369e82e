"""Self-contained units of evidence: what an extractive answer may show, never a fragment.

:func:`units_of` cuts a retrieved chunk into units a reader can understand without the page around them:

* a sentence (of a paragraph or a list item) that ends in terminal punctuation;
* a sentence that introduces a list or a table ("...:") **together with** its items, within a length budget
  (:data:`LIST_ITEMS`, :data:`LIST_WORDS`) — or not at all (its list is too long, is code, or continues in the
  next chunk);
* a table row with its header (``Service: ledger-api; Owning team: Billing; ...``).

Left out: headings and heading-like lines, dangling colons, bare links, sentences whose link text was lost,
markup debris. Links keep their text and show their URL in a safe form, ``text (https://...)``; images and
HTML tags are dropped. Each unit keeps the verbatim ``quote`` at its exact lines, which its citation shows.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from kb.answer.evidence import split_paragraph
from kb.models import Hit

#: A list shown with its introduction has at most this many items and this many words in all.
LIST_ITEMS = 8
LIST_WORDS = 140
#: A unit longer than this many words is a wall of text, not an answer sentence.
MAX_WORDS = 80


@dataclass
class Unit:
    text: str  # as the answer shows it: links as "text (url)"; a list's items on lines of their own ("\n- ")
    quote: str  # verbatim, whitespace-normalised: what is at start_line..end_line (the citation's quote)
    hit: Hit
    start_line: int
    end_line: int
    kind: str = "sentence"  # sentence | list | row
    header: tuple[int, str] | None = None  # a row's table header: (line, verbatim text), cited with it

    @property
    def lead(self) -> str:
        """The unit's first line (a list's introduction)."""
        return self.text.split("\n", 1)[0]


_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}")
_ITEM = re.compile(r"^(\s*)(?:[-*+]|\d{1,3}[.)])\s+")
_IMAGE = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)|!\[[^\]\n]*\]\[[^\]\n]*\]")
_LINK = re.compile(r"\[([^\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"\n]*\")?\s*\)")
_REF_LINK = re.compile(r"\[([^\]\n]+)\]\[[^\]\n]*\]")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_ATTRS = re.compile(r"\{:[^}\n]*\}")  # kramdown attribute lists: {: style="..."}
_QUOTE = re.compile(r"^\s{0,3}>\s?")
_TAG = re.compile(r"</?[a-zA-Z][^>\n]*>")
_END = re.compile(r"[.!?](?:[\"'”’)\]*_`]*)$")
_LOST_LINK = re.compile(
    r"\[\s*\]\(|\b(?:the|a|an|of|to|see|and|or)\s+\(\s*https?://|^\s*\(\s*https?://", re.I
)


def render(text: str) -> str:
    """``text`` as an answer shows it: images and HTML tags dropped, ``[text](url)`` as ``text (url)`` (an
    http(s) URL) or ``text`` (a relative or other link), ``<url>`` as the URL, entities decoded."""
    text = _ATTRS.sub("", _IMAGE.sub("", text))

    def link(m: re.Match[str]) -> str:
        label, url = m.group(1).strip(), m.group(2).strip()
        if url.lower().startswith(("http://", "https://")) and label:
            return f"{label} ({url})"
        return label

    text = _LINK.sub(link, text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = html.unescape(_TAG.sub("", text))
    text = re.sub(r"\\([\\`*_{}\[\]()#+\-.!|])", r"\1", text)  # markdown escapes
    return " ".join(text.split())


def fragment(raw: str, shown: str, *, intro: bool = False) -> str | None:
    """Why a sentence cannot stand alone (None when it can): ``raw`` as in the file, ``shown`` rendered.
    ``intro``: it introduces the list shown with it, so it may end with a colon."""
    words = shown.split()
    if len(words) < 4:
        return "too short"
    if len(words) > MAX_WORDS:
        return "too long"
    if _LOST_LINK.search(raw) or _LOST_LINK.search(shown):
        return "link text lost"
    outside = _LINK.sub(" ", _IMAGE.sub(" ", raw))
    if len(re.findall(r"[A-Za-z]{2,}", outside)) < 3:
        return "bare link"
    if shown.endswith(":") and not intro:
        return "dangling colon"
    if not intro and not _END.search(shown):
        return "heading-like (no sentence end)"
    if shown[0].islower() or shown[0] in ",;:)]}":
        return "starts mid-sentence"
    if shown.count("`") % 2 or shown.count("**") % 2 or "|" in _strip_code(shown):
        return "markup debris"
    return None


def _strip_code(text: str) -> str:
    return re.sub(r"`[^`]*`", "", text)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@dataclass
class _Block:
    kind: str  # para | item | table | code | break | heading
    lines: list[tuple[int, str]]  # (line number, text); an item's first line without its marker
    indent: int = 0
    raw: list[str] | None = None  # the lines as in the file (markers included)

    def verbatim(self) -> list[str]:
        return self.raw if self.raw is not None else [line for _, line in self.lines]


def _blocks(hit: Hit) -> list[_Block]:
    out: list[_Block] = []
    in_code = False
    for i, line in enumerate(hit.text.split("\n")):
        ln = hit.start_line + i
        if _FENCE.match(line):
            if not in_code:
                out.append(_Block("code", []))
            in_code = not in_code
            continue
        if in_code:
            out[-1].lines.append((ln, line))
            continue
        quoted = _QUOTE.match(line)
        if quoted:  # a blockquote line: its text, as a paragraph line
            line = line[quoted.end() :]
        if not line.strip() or _HEADING.match(line):
            out.append(_Block("break" if not line.strip() else "heading", []))
            continue
        if line.lstrip().startswith("|"):
            if out and out[-1].kind == "table":
                out[-1].lines.append((ln, line))
            else:
                out.append(_Block("table", [(ln, line)]))
            continue
        m = _ITEM.match(line)
        if m:
            out.append(_Block("item", [(ln, line[m.end() :])], len(m.group(1).expandtabs(4)), [line]))
            continue
        last = out[-1] if out else None
        if last is not None and last.kind in ("para", "item"):
            last.lines.append((ln, line))  # a paragraph's next line, or an item's continuation
            if last.raw is not None:
                last.raw.append(line)
        else:
            out.append(_Block("para", [(ln, line)]))
    return out


def _row_units(block: _Block, hit: Hit) -> list[Unit]:
    rows = block.lines
    if len(rows) < 3 or not _TABLE_SEP.match(rows[1][1].strip().lstrip("|")):
        return []
    header = [render(c) for c in _cells(rows[0][1])]
    out = []
    for ln, line in rows[2:]:
        cells = [render(c) for c in _cells(line)]
        pairs = [(h, c) for h, c in zip(header, cells, strict=False) if c and c != "-"]
        text = "; ".join(f"{h}: {c}" if h else c for h, c in pairs) + "."
        if len(pairs) < 2 or len(text.split()) < 4 or _LOST_LINK.search(text):
            continue
        head = (rows[0][0], " ".join(rows[0][1].split()))
        out.append(Unit(text, " ".join(line.split()), hit, ln, ln, "row", head))
    return out


def _sentences(block: _Block) -> list[tuple[str, int, int]]:
    return split_paragraph(block.lines)


def units_of(hit: Hit) -> list[Unit]:
    """The chunk's self-contained units (see the module docstring), in document order; each one's quote is
    checked to be at its lines of the chunk."""
    lines = hit.text.split("\n")

    def at(start: int, end: int, quote: str) -> bool:
        window = " ".join(lines[start - hit.start_line : end - hit.start_line + 1])
        return quote in " ".join(window.split())

    def at_its_lines(u: Unit) -> bool:
        return at(u.start_line, u.end_line, u.quote) and (
            u.header is None or at(u.header[0], u.header[0], u.header[1])
        )

    return [u for u in _units(hit) if at_its_lines(u)]


def _units(hit: Hit) -> list[Unit]:
    blocks = _blocks(hit)
    out: list[Unit] = []
    for b_idx, block in enumerate(blocks):
        if block.kind == "table":
            out.extend(_row_units(block, hit))
            continue
        if block.kind not in ("para", "item"):
            continue
        sentences = _sentences(block)
        for s_idx, (raw, first, last) in enumerate(sentences):
            shown = render(raw)
            closing = s_idx == len(sentences) - 1
            if closing and shown.endswith(":"):
                unit = _with_list(raw, shown, first, blocks, b_idx, block.indent, hit)
                if unit is not None:
                    out.append(unit)
                continue
            if fragment(raw, shown) is None:
                out.append(Unit(shown, " ".join(raw.split()), hit, first, last))
    return out


def _long(hit: Hit) -> bool:
    """Whether the chunk may have been cut for length (then a list at its end may go on in the next one)."""
    return len(hit.text.split()) > 120


def _with_list(
    raw: str, shown: str, first: int, blocks: list[_Block], at: int, indent: int, hit: Hit
) -> Unit | None:
    """An introduction ("...:") with the list or table that follows it, or None (no list follows in this
    chunk, it is code, or it is over the budget)."""
    if fragment(raw, shown, intro=True) is not None:
        return None
    nxt = at + 1
    while nxt < len(blocks) and blocks[nxt].kind == "break":
        nxt += 1
    if nxt >= len(blocks):
        return None
    items: list[str] = []
    raws: list[str] = []
    end = first
    follow = blocks[nxt]
    if follow.kind == "table":
        rows = _row_units(follow, hit)
        if not rows:
            return None
        items = [r.text for r in rows]
        raws = follow.verbatim()
        end = follow.lines[-1][0]
        if nxt + 1 == len(blocks) and _long(hit):  # the table may go on in the next chunk
            return None
    elif follow.kind == "item":
        level = follow.indent
        j = nxt
        while j < len(blocks) and blocks[j].kind in ("item", "break"):
            b = blocks[j]
            j += 1
            if b.kind == "break":
                continue
            if b.indent < level:
                break
            text = render(" ".join(line for _, line in b.lines))
            if b.indent == level:
                items.append(text)
            elif items:
                items[-1] += " — " + text
            raws.extend(b.verbatim())
            end = b.lines[-1][0]
        if j == len(blocks) and _long(hit):  # the list may go on in the next chunk
            return None
    else:
        return None
    if not items or len(items) > LIST_ITEMS:
        return None
    if len(shown.split()) + sum(len(i.split()) for i in items) > LIST_WORDS:
        return None
    text = shown + "".join(f"\n- {i}" for i in items)
    quote = " ".join((raw + " " + " ".join(raws)).split())
    return Unit(text, quote, hit, first, end, "list")
