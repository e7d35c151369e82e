"""Loaders: bytes of a supported file -> a :class:`Document` (text + metadata).

Markdown and plain text keep the file's own lines, so citations point at real line numbers. PDF, HTML and DOCX
are converted to markdown-like text first; their line numbers refer to that extracted text, and PDF pages are
kept as ``page`` metadata. Markdown YAML front matter becomes metadata and is not chunked.

Hostile files are bounded before any expensive work:

* Front matter is parsed only up to :data:`MAX_FRONT_MATTER_BYTES`; YAML aliases (``*name``, including
  ``<<: *base`` merge keys) are refused while composing (an alias bomb is a few hundred bytes that expand
  exponentially once stringified); nesting deeper than :data:`MAX_FRONT_MATTER_DEPTH` is refused; and the
  loaded value is walked with a node budget (:data:`MAX_FRONT_MATTER_NODES`) and a character budget
  (:data:`MAX_FRONT_MATTER_CHARS`) before anything is stringified. Refused front matter is not metadata: the
  file is indexed as plain text (front matter included, so nothing is hidden) with a ``front_matter_error``.
* A DOCX is a zip: its central directory is checked (:func:`check_zip_members`) before python-docx opens it.
  A member larger than :data:`MAX_ZIP_MEMBER_BYTES`, a total above :data:`MAX_ZIP_TOTAL_BYTES`, a member that
  inflates more than :data:`MAX_ZIP_RATIO` times (past 1 MiB), or too many members is a zip bomb and the file
  is skipped with that reason. Declared sizes can lie, and zipfile's whole-member ``read()`` inflates the
  entire stream before truncating it, so every member is then inflated as a stream (output counted, not kept)
  and must stop within its declared size.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from ingest.errors import LoadError
from ingest.zipguard import check_zip_members

__all__ = ["Document", "LoadError", "check_zip_members", "decode_text", "load_document", "split_front_matter"]


@dataclass
class Document:
    text: str
    kind: str
    metadata: dict[str, Any] = field(default_factory=dict)
    body_start_line: int = 1  # first line after front matter (1-based)
    page_starts: list[int] = field(default_factory=list)  # PDF: line number at which each page starts


def decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LoadError("binary content (NUL bytes) in a text file")
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as exc:
                raise LoadError(f"not valid {codec} text ({exc.reason} at byte {exc.start})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(
            f"not valid UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8 to index it"
        ) from None
    controls = sum(1 for ch in text[:4096] if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    if controls > 8:
        raise LoadError("binary content (control characters) in a text file")
    return text


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?\r?\n)?(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)


MAX_FRONT_MATTER_BYTES = 64 * 1024  # larger front matter is not parsed (pure-Python YAML, ~1 s per MB)
MAX_FRONT_MATTER_DEPTH = 32  # nesting levels of lists/mappings
MAX_FRONT_MATTER_NODES = 10_000  # values visited, counting every repetition of a shared value
MAX_FRONT_MATTER_CHARS = 64 * 1024  # characters of scalars (and keys) visited, same counting


class _FrontMatterRefused(Exception):
    """Front matter that kb will not turn into metadata; the message is the reason."""


@functools.cache
def _front_matter_loader() -> type:
    import yaml

    class NoAliasSafeLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses aliases when composing, before any structure can be shared."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise _FrontMatterRefused("front matter uses YAML aliases (*name), which kb does not expand")
            if self._depth >= MAX_FRONT_MATTER_DEPTH:
                raise _FrontMatterRefused(
                    f"front matter is nested deeper than {MAX_FRONT_MATTER_DEPTH} levels"
                )
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self._depth = 0

    return NoAliasSafeLoader


def split_front_matter(text: str) -> tuple[dict[str, Any], int, str | None]:
    """Return (metadata, first body line, problem). Malformed or refused front matter is kept as text and
    reported (metadata ``{}``, body line 1, problem = the reason ending in "indexed as text")."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, 1, None
    import yaml

    body_line = text[: match.end()].count("\n") + 1
    if not match.group(0).endswith("\n"):
        body_line = text[: match.end()].count("\n") + 2
    source = match.group(1) or ""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_FRONT_MATTER_BYTES:
        return {}, 1, f"front matter is larger than {MAX_FRONT_MATTER_BYTES // 1024} KB; indexed as text"
    try:
        meta = yaml.load(source, Loader=_front_matter_loader()) or {}  # noqa: S506 - a SafeLoader subclass
        if not isinstance(meta, dict):
            return {}, 1, "front matter is not a mapping; indexed as text"
        _check_budget(meta)
        clean = {str(k): _scalar(v) for k, v in meta.items()}
    except _FrontMatterRefused as exc:
        return {}, 1, f"{exc}; indexed as text"
    except yaml.YAMLError as exc:
        return {}, 1, f"front matter is not valid YAML ({str(exc).splitlines()[0]}); indexed as text"
    except (RecursionError, MemoryError):
        return {}, 1, "front matter is too large or too deeply nested; indexed as text"
    return clean, body_line, None


def _check_budget(value: Any) -> None:
    """Walk ``value`` as stringifying it would (shared values counted each time they are reached), stopping as
    soon as the node, character or depth budget is spent: the cost of this walk is bounded by the budget."""
    nodes = chars = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_FRONT_MATTER_NODES:
            raise _FrontMatterRefused(f"front matter has more than {MAX_FRONT_MATTER_NODES} values")
        if depth > MAX_FRONT_MATTER_DEPTH:
            raise _FrontMatterRefused(f"front matter is nested deeper than {MAX_FRONT_MATTER_DEPTH} levels")
        if isinstance(item, dict):
            for k, v in item.items():
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in item)
        else:
            chars += len(item) if isinstance(item, (str, bytes)) else 32
            if chars > MAX_FRONT_MATTER_CHARS:
                raise _FrontMatterRefused(
                    f"front matter holds more than {MAX_FRONT_MATTER_CHARS // 1024} K characters of values"
                )


def _scalar(value: Any) -> Any:
    """A metadata value: scalars as they are, lists joined with ", ", anything else as ``str()``. Only called
    on values that passed :func:`_check_budget`, so the strings are bounded."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def load_document(data: bytes, kind: str) -> Document:
    """Turn a file's bytes into a Document. Raises :class:`LoadError` with a user-facing reason."""
    if kind in ("markdown", "text"):
        text = decode_text(data)
        if not text.strip():
            raise LoadError("no text (only whitespace)")
        if kind == "markdown":
            meta, body_start, problem = split_front_matter(text)
            if problem:
                meta = {"front_matter_error": problem}
            return Document(text=text, kind=kind, metadata=meta, body_start_line=body_start)
        return Document(text=text, kind=kind)
    if kind == "html":
        return _load_html(decode_text(data))
    if kind == "pdf":
        return _load_pdf(data)
    if kind == "docx":
        return _load_docx(data)
    raise LoadError(f"unsupported kind {kind!r}")


# --- HTML --------------------------------------------------------------------------------------------------

_SKIP_TAGS = {
    "script",
    "style",
    "nav",
    "header",
    "footer",
    "aside",
    "noscript",
    "template",
    "svg",
    "form",
    "iframe",
}
_BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "li",
    "tr",
    "br",
    "pre",
    "blockquote",
    "table",
    "ul",
    "ol",
}


class _HtmlToMarkdown(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.title: str | None = None
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag == "title":
            self._in_title = True
        elif not self.skip and re.fullmatch(r"h[1-6]", tag):
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif not self.skip and tag == "li":
            self.out.append("\n- ")
        elif not self.skip and tag == "pre":
            self._pre += 1
            self.out.append("\n\n```\n")
        elif not self.skip and tag in _BLOCK_TAGS:
            self.out.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag == "title":
            self._in_title = False
        elif not self.skip and tag == "pre":
            self._pre = max(0, self._pre - 1)
            self.out.append("\n```\n\n")
        elif not self.skip and (tag in _BLOCK_TAGS or re.fullmatch(r"h[1-6]", tag)):
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = (self.title or "") + data.strip()
            return
        if self.skip:
            return
        self.out.append(data if self._pre else re.sub(r"\s+", " ", data))


def _load_html(source: str) -> Document:
    parser = _HtmlToMarkdown()
    try:
        parser.feed(source)
        parser.close()
    except Exception as exc:  # html.parser is lenient; anything raised here is a real defect of the file
        raise LoadError(f"malformed HTML: {exc}") from None
    text = "".join(parser.out)
    lines = [line.rstrip() for line in text.splitlines()]
    joined = "\n".join(line.lstrip() if not line.startswith(" ") else line for line in lines)
    text = re.sub(r"\n{3,}", "\n\n", joined)
    text = text.strip() + "\n"  # entities were already decoded by the parser (convert_charrefs)
    if not text.strip():
        raise LoadError("no text in the HTML page")
    meta: dict[str, Any] = {"title": parser.title} if parser.title else {}
    return Document(text=text, kind="html", metadata=meta)


# --- PDF ---------------------------------------------------------------------------------------------------


def _load_pdf(data: bytes) -> Document:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:  # pragma: no cover - pypdf is a dependency
        raise LoadError("PDF support needs pypdf: pip install pypdf") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise LoadError("encrypted PDF: cannot be read without its password")
        pages = [page.extract_text() or "" for page in reader.pages]
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise LoadError(f"malformed PDF ({exc})") from None
    except Exception as exc:  # pypdf raises many internal exception types on damaged files
        raise LoadError(f"malformed PDF ({type(exc).__name__}: {exc})") from None
    lines: list[str] = []
    page_starts: list[int] = []
    for text in pages:
        page_starts.append(len(lines) + 1)
        lines.extend(line.rstrip() for line in text.splitlines())
        lines.append("")
    body = "\n".join(lines).strip("\n")
    if not body.strip():
        raise LoadError("no extractable text in the PDF (a scanned image? OCR it first)")
    meta: dict[str, Any] = {"pages": len(pages)}
    info = reader.metadata
    if info and info.title:
        meta["title"] = str(info.title)
    return Document(text="\n".join(lines), kind="pdf", metadata=meta, page_starts=page_starts)


# --- DOCX --------------------------------------------------------------------------------------------------


def _load_docx(data: bytes) -> Document:
    try:
        import docx
    except ImportError:  # pragma: no cover - python-docx is a dependency
        raise LoadError("DOCX support needs python-docx: pip install python-docx") from None
    check_zip_members(data, "DOCX")
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises zipfile/KeyError/ValueError variants on damaged files
        raise LoadError(f"malformed DOCX ({type(exc).__name__}: {exc})") from None
    out: list[str] = []
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name or "").lower() if para.style is not None else ""
        match = re.match(r"heading (\d)", style)
        if match:
            out.append("#" * int(match.group(1)) + " " + text)
        elif style == "title":
            out.append("# " + text)
        elif "list" in style:
            out.append("- " + text)
        else:
            out.append(text)
        out.append("")
    for table in document.tables:
        rows = [[cell.text.strip().replace("\n", " ") for cell in row.cells] for row in table.rows]
        if rows:
            out.append("| " + " | ".join(rows[0]) + " |")
            out.append("|" + "---|" * len(rows[0]))
            out.extend("| " + " | ".join(r) + " |" for r in rows[1:])
            out.append("")
    text = "\n".join(out)
    if not text.strip():
        raise LoadError("no text in the DOCX document")
    meta: dict[str, Any] = {}
    if document.core_properties.title:
        meta["title"] = document.core_properties.title
    return Document(text=text, kind="docx", metadata=meta)
