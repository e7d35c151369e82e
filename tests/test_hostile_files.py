"""Hostile files (issue 14, items 1 and 2): each costs <= 10 s and <= 512 MB RSS and ends as a safely indexed
file or a LoadError whose message is the skip reason.

The attacks run in a child process so that a regression cannot take the test runner down with it; the
child measures its own time and peak-RSS growth (``resource.getrusage``) around the single ``load_document``
call and runs under an address-space limit, so a regression fails fast (MemoryError) instead of swapping
the machine.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import docx
import pytest

from ingest.loaders import (
    MAX_FRONT_MATTER_NODES,
    LoadError,
    check_zip_members,
    load_document,
    split_front_matter,
)

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 10.0
RSS_MB = 512.0
MiB = 1 << 20
GiB = 1 << 30

_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 * 1024 ** 3, 3 * 1024 ** 3))
import docx, yaml  # noqa: F401 - imported before the baseline so only the load is measured
from ingest.loaders import LoadError, load_document
path, kind = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
result = {}
try:
    doc = load_document(data, kind)
    result.update(metadata=doc.metadata, body_start_line=doc.body_start_line, text_len=len(doc.text))
except LoadError as exc:
    result["error"] = str(exc)
result["seconds"] = time.perf_counter() - t0
result["rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(result, default=str))
"""


def load_in_child(path: Path, kind: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), kind],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{path.name}: {result['seconds']:.3f} s, +{result['rss_mb']:.1f} MB RSS")
    return result


# --- 1. YAML alias bomb in front matter -------------------------------------------------------------------


def alias_bomb(levels: int) -> bytes:
    """The issue's attack: each level is a list of 9 aliases of the previous one (9**levels leaves once
    expanded). 6 levels is 336 bytes and 9 levels is 474 bytes, as in the report."""
    lines = ["---", "l0: &l0 [" + ",".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    lines += ["---", "Bomb."]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(("levels", "size"), [(6, 336), (8, 428), (9, 474)])
def test_yaml_alias_bomb_is_refused_within_budget(tmp_path: Path, levels: int, size: int) -> None:
    data = alias_bomb(levels)
    assert len(data) == size
    path = tmp_path / f"bomb{levels}.md"
    path.write_bytes(data)
    result = load_in_child(path, "markdown")
    assert "error" not in result  # the file is indexed, as text, without that metadata
    assert result["seconds"] < SECONDS
    assert result["rss_mb"] < RSS_MB
    assert len(json.dumps(result["metadata"])) < 512
    assert "aliases" in result["metadata"]["front_matter_error"]
    assert result["metadata"]["front_matter_error"].endswith("indexed as text")
    assert result["body_start_line"] == 1  # nothing hidden: the front matter is chunked as text
    assert result["text_len"] == len(data)


def test_merge_key_alias_is_refused_too() -> None:
    meta, body, problem = split_front_matter("---\nbase: &b {a: 1}\nchild:\n  <<: *b\n---\nx\n")
    assert meta == {} and body == 1 and problem is not None and "aliases" in problem


def test_anchor_without_alias_is_ordinary_front_matter() -> None:
    meta, body, problem = split_front_matter("---\ntitle: &t Payments\ntags: [a, b]\n---\nbody\n")
    assert (meta, body, problem) == ({"title": "Payments", "tags": "a, b"}, 5, None)


def test_deeply_nested_front_matter_is_refused_not_a_recursion_error() -> None:
    depth = 20_000
    meta, _, problem = split_front_matter("---\nx: " + "[" * depth + "]" * depth + "\n---\nbody\n")
    assert meta == {} and problem is not None and "nested" in problem


def test_front_matter_with_too_many_values_is_refused() -> None:
    items = ",".join(str(i) for i in range(MAX_FRONT_MATTER_NODES + 10))
    t0 = time.perf_counter()
    meta, _, problem = split_front_matter(f"---\nx: [{items}]\n---\nbody\n")
    assert time.perf_counter() - t0 < SECONDS
    assert meta == {} and problem is not None and "values" in problem


def test_front_matter_over_the_size_cap_is_not_parsed() -> None:
    big = "---\n" + "".join(f"k{i}: {'v' * 60}\n" for i in range(2000)) + "---\nbody\n"
    t0 = time.perf_counter()
    meta, body, problem = split_front_matter(big)
    assert time.perf_counter() - t0 < 1.0
    assert meta == {} and body == 1 and problem is not None and "larger than" in problem


# --- 2. DOCX zip bomb -------------------------------------------------------------------------------------


def _raw_zip(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of already-deflated members (name, raw deflate data, crc32, inflated size); sizes < 4 GiB."""
    out, central = bytearray(), bytearray()
    for name, comp, crc, size in members:
        raw, offset = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(comp), size, len(raw), 0)
        out += raw + comp
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            *(0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(comp), size, len(raw), 0, 0, 0, 0, 0, offset),
        )
        central += raw
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
    return bytes(out)


def docx_bomb(inflated: int = GiB, declared: int | None = None) -> bytes:
    """A real python-docx package whose word/document.xml is valid XML inflating to ``inflated`` bytes
    (1 GiB: a ~1 MB file). The deflate stream is one compressed MiB of spaces repeated (a full flush resets
    the compressor, so every MiB compresses to the same bytes): built in about a second, not by deflating
    1 GiB."""
    buf = io.BytesIO()
    docx.Document().save(buf)
    package = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    members = []
    for info in package.infolist():
        if info.filename != "word/document.xml":
            data = package.read(info.filename)
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            members.append((info.filename, c.compress(data) + c.flush(), zlib.crc32(data), len(data)))
    head = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w='
        b'"http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
    )
    tail = b"<w:p/></w:body></w:document>"
    chunks, rest = divmod(inflated - len(head) - len(tail), MiB)
    spaces = b" " * MiB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    one = c.compress(spaces) + c.flush(zlib.Z_FULL_FLUSH)
    stream += one * chunks + c.compress(spaces[:rest] + tail) + c.flush()
    crc = zlib.crc32(head)
    for _ in range(chunks):
        crc = zlib.crc32(spaces, crc)
    crc = zlib.crc32(spaces[:rest] + tail, crc)
    members.insert(1, ("word/document.xml", stream, crc, inflated if declared is None else declared))
    return _raw_zip(members)


def test_docx_bomb_builder_makes_a_real_bomb() -> None:
    small = docx_bomb(inflated=8 * MiB)  # the same construction at 8 MiB, inflated for real
    inflated = zipfile.ZipFile(io.BytesIO(small)).read("word/document.xml")  # CRC checked by zipfile
    assert len(inflated) == 8 * MiB and inflated.endswith(b"</w:document>")
    big = docx_bomb()
    info = zipfile.ZipFile(io.BytesIO(big)).getinfo("word/document.xml")
    assert info.file_size == GiB and len(big) < 1.2 * MiB


def test_docx_zip_bomb_is_refused_within_budget(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    path = tmp_path / "bomb.docx"
    path.write_bytes(docx_bomb())
    size = path.stat().st_size / MiB
    print(f"built a {size:.2f} MiB DOCX inflating to 1 GiB in {time.perf_counter() - t0:.2f} s")
    result = load_in_child(path, "docx")
    assert "zip bomb" in result["error"] and "word/document.xml" in result["error"]
    assert result["seconds"] < SECONDS
    assert result["rss_mb"] < RSS_MB


def test_docx_whose_declared_size_lies_is_bounded(tmp_path: Path) -> None:
    """The central directory says 4 KB but the stream inflates to 1 GiB. zipfile's whole-member read() would
    inflate all of it before truncating to the declared size (20 s, 1 GiB); the streaming check stops at
    4 KB."""
    path = tmp_path / "liar.docx"
    path.write_bytes(docx_bomb(declared=4096))
    result = load_in_child(path, "docx")
    assert "zip bomb" in result["error"] and "past its declared size" in result["error"]
    assert result["seconds"] < SECONDS
    assert result["rss_mb"] < RSS_MB


def test_zip_checks_name_the_limit() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"\0" * (4 * MiB))  # 4 MiB at ~1000x: over the ratio cap
    reason = r"zip bomb: word/document.xml in the DOCX inflates \d+x \(limit 100x\)"
    with pytest.raises(LoadError, match=reason):
        check_zip_members(buf.getvalue(), "DOCX")


def test_ordinary_docx_passes_the_zip_checks() -> None:
    document = docx.Document()
    for i in range(2000):
        document.add_paragraph(f"Paragraph {i}: the payments service retries failed webhooks three times.")
    buf = io.BytesIO()
    document.save(buf)
    check_zip_members(buf.getvalue(), "DOCX")
    assert load_document(buf.getvalue(), "docx").text.startswith("Paragraph 0:")
