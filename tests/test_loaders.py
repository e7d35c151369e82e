"""ingest.loaders: bytes of a real file -> Document, or a LoadError whose message tells the user why."""

from __future__ import annotations

import io
import random
import zipfile

import docx
import pytest
from pypdf import PdfReader

from ingest.loaders import LoadError, decode_text, load_document, split_front_matter

# --- text decoding -----------------------------------------------------------------------------------------


def test_utf8_text_is_kept_exactly() -> None:
    text = "Zoë's café — naïve 日本語 🚀\nsecond line\n"
    doc = load_document(text.encode("utf-8"), "text")
    assert doc.text == text
    assert doc.kind == "text" and doc.body_start_line == 1


def test_utf8_bom_is_removed() -> None:
    doc = load_document(b"\xef\xbb\xbf# Heading\n\nbody\n", "markdown")
    assert doc.text == "# Heading\n\nbody\n"  # no U+FEFF glued to the first heading


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be"])
def test_utf16_with_bom_is_decoded_despite_its_nul_bytes(codec: str) -> None:
    text = "# Notes\n\nUmlaut ü and euro €\n"
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = b"\xfe\xff" + data
    assert b"\x00" in data
    doc = load_document(data, "markdown")
    assert doc.text == text


def test_invalid_utf8_latin1_bytes_is_a_load_error_mentioning_utf8() -> None:
    data = "Résumé of the café meeting\n".encode("latin-1")
    with pytest.raises(LoadError) as info:
        load_document(data, "text")
    assert "UTF-8" in str(info.value)
    assert "convert" in str(info.value)


def test_nul_bytes_mean_binary() -> None:
    data = (
        b"# Looks like markdown\n" + bytes(random.Random(1).randrange(256) for _ in range(500)) + b"\x00\x00"
    )
    with pytest.raises(LoadError, match="binary"):
        load_document(data, "markdown")


def test_many_control_characters_mean_binary() -> None:
    with pytest.raises(LoadError, match="binary"):
        decode_text(b"text\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10 more")


def test_whitespace_only_file_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="whitespace"):
        load_document(b"  \n\t\n\n", "markdown")


def test_unknown_kind_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="unsupported"):
        load_document(b"data", "spreadsheet")


# --- markdown front matter --------------------------------------------------------------------------------


def test_front_matter_becomes_metadata_and_body_starts_after_it() -> None:
    src = "---\ntitle: Payments Service\nowner: team-billing\ntags: [api, billing]\nversion: 3\n---\n"
    src += "# Payments\n\nBody.\n"
    doc = load_document(src.encode(), "markdown")
    assert doc.metadata == {
        "title": "Payments Service",
        "owner": "team-billing",
        "tags": "api, billing",
        "version": 3,
    }
    assert doc.body_start_line == 7
    assert doc.text.splitlines()[doc.body_start_line - 1] == "# Payments"
    assert doc.text == src  # the file's text (and so its line numbers) is kept whole


def test_front_matter_with_crlf_and_dots_terminator() -> None:
    meta, body_line, problem = split_front_matter("---\r\ntitle: X\r\n...\r\nbody line\r\n")
    assert (meta, body_line, problem) == ({"title": "X"}, 4, None)


def test_front_matter_dates_and_nested_values_become_strings() -> None:
    meta, _, _ = split_front_matter("---\ndate: 2024-05-01\nowner: {name: Ana}\n---\nx\n")
    assert meta == {"date": "2024-05-01", "owner": "{'name': 'Ana'}"}


def test_no_front_matter_when_the_dashes_are_not_on_line_one() -> None:
    src = "# Title\n\n---\nnot: metadata\n---\n"
    doc = load_document(src.encode(), "markdown")
    assert doc.metadata == {} and doc.body_start_line == 1


def test_malformed_yaml_front_matter_is_reported_and_the_text_kept() -> None:
    src = "---\ntitle: [unclosed\nowner: : :\n---\n# Runbook\n\nRestart the worker.\n"
    doc = load_document(src.encode(), "markdown")
    assert "front_matter_error" in doc.metadata
    assert "YAML" in doc.metadata["front_matter_error"]
    assert doc.body_start_line == 1  # nothing is hidden: the whole file is indexed as text
    assert doc.text == src


def test_front_matter_that_is_not_a_mapping_is_reported() -> None:
    doc = load_document(b"---\n- a\n- b\n---\nbody\n", "markdown")
    assert "mapping" in doc.metadata["front_matter_error"]
    assert doc.body_start_line == 1


def test_plain_text_files_have_no_front_matter_processing() -> None:
    src = "---\ntitle: X\n---\nbody\n"
    doc = load_document(src.encode(), "text")
    assert doc.metadata == {} and doc.body_start_line == 1 and doc.text == src


# --- HTML -------------------------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><title>Incident Runbook</title>
<style>body { color: red } .SECRET_STYLE {}</style>
<script>var trackingToken = "SCRIPT_TEXT";</script>
</head>
<body>
<nav><a href="/">Home</a> | <a href="/about">NAV_LINK</a></nav>
<header>SITE_HEADER</header>
<main>
<h1>Incident   Runbook</h1>
<p>When the queue backs up,
   restart the <b>worker</b> &amp; check the lag.</p>
<h2>Escalation</h2>
<ul><li>Page the on-call engineer</li><li>Open a ticket</li></ul>
<h3>Commands</h3>
<pre>kubectl rollout restart deploy/worker
  --namespace jobs</pre>
<p>Write &amp;lt;br&amp;gt; literally.</p>
</main>
<footer>FOOTER_TEXT</footer>
</body></html>
"""


def test_html_becomes_markdown_without_page_chrome() -> None:
    doc = load_document(PAGE.encode(), "html")
    for noise in ("SECRET_STYLE", "SCRIPT_TEXT", "trackingToken", "NAV_LINK", "SITE_HEADER", "FOOTER_TEXT"):
        assert noise not in doc.text
    lines = doc.text.splitlines()
    assert "# Incident Runbook" in lines
    assert "## Escalation" in lines
    assert "### Commands" in lines
    assert "When the queue backs up, restart the worker & check the lag." in lines
    assert "- Page the on-call engineer" in lines
    assert "  --namespace jobs" in lines  # <pre> keeps its indentation
    assert doc.metadata == {"title": "Incident Runbook"}
    assert doc.kind == "html"


def test_html_entities_are_decoded_exactly_once() -> None:
    doc = load_document(PAGE.encode(), "html")
    # The page shows the literal text "&lt;br&gt;": decoding twice would turn it into a tag "<br>".
    assert "Write &lt;br&gt; literally." in doc.text.splitlines()


def test_html_with_no_visible_text_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="no text"):
        load_document(b"<html><head><script>x()</script></head><body><nav>menu</nav></body></html>", "html")


def test_html_in_latin1_is_a_load_error_not_mojibake() -> None:
    with pytest.raises(LoadError, match="UTF-8"):
        load_document("<p>Caf\u00e9</p>".encode("latin-1"), "html")


# --- PDF --------------------------------------------------------------------------------------------------


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF (Helvetica, one BT...Tj...ET text object per page), with a correct xref table."""
    objs: list[bytes] = []
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info_ref = b""
    if title:
        objs.append(f"<< /Title ({title}) >>".encode())
        info_ref = b" /Info %d 0 R" % len(objs)
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1,
        info_ref,
        xref,
    )
    return bytes(out)


def test_hand_built_pdf_is_a_real_pdf() -> None:
    data = make_pdf([["Hello PDF"]])
    reader = PdfReader(io.BytesIO(data), strict=True)  # strict: the xref offsets must be right
    assert len(reader.pages) == 1
    assert "Hello PDF" in reader.pages[0].extract_text()


def test_pdf_text_pages_and_title() -> None:
    data = make_pdf(
        [["Quarterly roadmap review", "Ship the billing API in Q3"], ["Appendix (risks)", "Vendor delay"]],
        title="Roadmap 2025",
    )
    doc = load_document(data, "pdf")
    lines = doc.text.splitlines()
    assert doc.kind == "pdf"
    assert doc.metadata == {"pages": 2, "title": "Roadmap 2025"}
    assert len(doc.page_starts) == 2
    p1, p2 = doc.page_starts
    assert p1 == 1
    assert lines[p1 - 1] == "Quarterly roadmap review"
    assert lines[p1] == "Ship the billing API in Q3"
    assert lines[p2 - 1] == "Appendix (risks)"  # the second page starts where page_starts says
    assert "Vendor delay" in lines[p2 - 1 :]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not a pdf at all",
        b"%PDF-1.4\n" + bytes(random.Random(7).randrange(256) for _ in range(400)),
        make_pdf([["truncated document"]])[:120],
    ],
    ids=["empty", "text", "header-then-garbage", "truncated"],
)
def test_malformed_pdf_is_a_load_error(data: bytes) -> None:
    with pytest.raises(LoadError, match="PDF"):
        load_document(data, "pdf")


def test_pdf_without_text_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="no extractable text"):
        load_document(make_pdf([[]]), "pdf")


# --- DOCX -------------------------------------------------------------------------------------------------


def make_docx() -> bytes:
    document = docx.Document()
    document.core_properties.title = "Onboarding Guide"
    document.add_heading("Onboarding", level=1)
    document.add_paragraph("Welcome to the platform team.")
    document.add_heading("Access", level=2)
    document.add_paragraph("Request VPN access from IT on day one.")
    document.add_paragraph("Laptop setup", style="List Bullet")
    table = document.add_table(rows=3, cols=2)
    for r, (a, b) in enumerate([("Tool", "Owner"), ("Jira", "PMO"), ("Grafana", "SRE")]):
        table.cell(r, 0).text = a
        table.cell(r, 1).text = b
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def test_docx_headings_paragraphs_lists_and_tables_become_markdown() -> None:
    doc = load_document(make_docx(), "docx")
    lines = doc.text.splitlines()
    assert doc.kind == "docx"
    assert lines[0] == "# Onboarding"
    assert "## Access" in lines
    assert lines.index("## Access") > lines.index("Welcome to the platform team.")
    assert "Request VPN access from IT on day one." in lines
    assert "- Laptop setup" in lines
    table_at = lines.index("| Tool | Owner |")
    assert lines[table_at + 1] == "|---|---|"
    assert lines[table_at + 2 : table_at + 4] == ["| Jira | PMO |", "| Grafana | SRE |"]
    assert doc.metadata == {"title": "Onboarding Guide"}


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        bytes(random.Random(3).randrange(256) for _ in range(600)),
        b"PK\x03\x04 not really a zip",
        _zip({"hello.txt": b"a zip, but no document inside"}),
        make_docx()[:400],
    ],
    ids=["random-bytes", "fake-zip-header", "zip-without-document", "truncated-docx"],
)
def test_malformed_docx_is_a_load_error(data: bytes) -> None:
    with pytest.raises(LoadError, match="DOCX"):
        load_document(data, "docx")


def test_docx_without_text_is_a_load_error() -> None:
    buf = io.BytesIO()
    docx.Document().save(buf)
    with pytest.raises(LoadError, match="no text"):
        load_document(buf.getvalue(), "docx")
