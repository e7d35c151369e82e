"""Loaders: bytes of a supported file -> a :class:`Document` (text + metadata).

Markdown and plain text keep the file's own lines, so citations point at real line numbers. PDF, HTML and DOCX
are converted to markdown-like text first; their line numbers refer to that extracted text, and PDF pages are
kept as ``page`` metadata. Markdown YAML front matter becomes metadata and is not chunked.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any


class LoadError(Exception):
    """The file cannot be turned into text; the message is the reason shown to the user."""


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


def split_front_matter(text: str) -> tuple[dict[str, Any], int, str | None]:
    """Return (metadata, first body line, problem). Malformed front matter is kept as text and reported."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, 1, None
    import yaml

    body_line = text[: match.end()].count("\n") + 1
    if not match.group(0).endswith("\n"):
        body_line = text[: match.end()].count("\n") + 2
    try:
        meta = yaml.safe_load(match.group(1) or "") or {}
    except yaml.YAMLError as exc:
        return {}, 1, f"front matter is not valid YAML ({str(exc).splitlines()[0]}); indexed as text"
    if not isinstance(meta, dict):
        return {}, 1, "front matter is not a mapping; indexed as text"
    clean = {str(k): _scalar(v) for k, v in meta.items()}
    return clean, body_line, None


def _scalar(value: Any) -> Any:
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

_SKIP_TAGS = {"script", "style", "nav", "header", "footer", "aside", "noscript", "template", "svg", "form", "iframe"}
_BLOCK_TAGS = {"p", "div", "section", "article", "main", "li", "tr", "br", "pre", "blockquote", "table", "ul", "ol"}


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
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(line.lstrip() if not line.startswith(" ") else line for line in lines))
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
