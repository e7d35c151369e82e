"""Issue 14's remaining attacks, each reproduced at the issue's size: secrets inside documents (item 6),
a file name with a newline (8), a hard link to a file outside the workspace (9), 4.5 MB of nested
blockquotes (10), and ``kb resources import`` of files it must refuse (5, 12). Disk faults:
test_disk_faults.py; kb doctor: test_doctor.py; a crowd of clients: test_crowd.py.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingest.chunking import chunk_document
from ingest.discovery import discover
from ingest.layout import DEFAULT_INCLUDE
from ingest.loaders import LoadError, load_document
from kb import KnowledgeBase
from kb.errors import ConfigError
from kb.testing import FakeEmbedder, run_kb, small_workspace

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 10.0
RSS_MB = 512.0


# --- item 6: secrets inside ordinary documents ----------------------------------------------------------


def the_issue_notes(seed: int = 6) -> tuple[str, dict[str, str]]:
    """notes.md of the issue: an AWS access key, an RSA private key block and ``password: hunter2`` (random
    fakes in the providers' formats), plus an API key in the front matter."""
    rng = random.Random(seed)
    key_id = "AKIA" + "".join(rng.choice(string.ascii_uppercase + "234567") for _ in range(16))
    body = [
        "".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(64)) for _ in range(8)
    ]
    token = "ghp_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(36))
    text = (
        f"---\ntitle: Payments notes\ndeploy_token: {token}\n---\n"
        "# Notes\n\nProd access for the payments service.\n\n"
        f"- AWS key: {key_id}\n- admin password: hunter2\n\n"
        "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END RSA PRIVATE KEY-----\n\n"
        "## Rotation\n\nRotate the payments credentials every 90 days.\n"
    )
    return text, {"aws": key_id, "password": "hunter2", "key": body[0], "key-end": body[-1], "token": token}


def write_notes(ws: Path) -> dict[str, str]:
    text, secrets = the_issue_notes()
    (ws / ".workos/context/notes.md").write_text(text, encoding="utf-8")
    return secrets


def state_bytes(ws: Path) -> bytes:
    """Every byte kb keeps for the workspace (manifest, its WAL, Chroma)."""
    return b"".join(p.read_bytes() for p in (ws / ".workos/.kb").rglob("*") if p.is_file())


def test_secrets_are_redacted_before_anything_is_stored_or_embedded(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    secrets = write_notes(ws)
    emb = FakeEmbedder()
    with KnowledgeBase.open(ws, embedder=emb) as kb:
        report = kb.index()
        assert [(r.line, r.kind) for r in report.redacted] == [
            (3, "github-pat"),
            (9, "aws-access-key"),
            (10, "password"),
            (12, "private-key"),
        ]
        assert {r.path for r in report.redacted} == {".workos/context/notes.md"}
        out = json.dumps(report.to_dict())
        assert '"redacted": [{"path": ".workos/context/notes.md", "line": 3, "kind": "github-pat"}' in out
        hits = kb.search("AWS key admin password private key", k=3, mode="bm25")
        notes = [h for h in hits if h.path.endswith("notes.md")]
        assert notes and "[secret: aws-access-key]" in notes[0].text and "[secret: password]" in notes[0].text
        shown = json.dumps([h.to_dict() for h in hits]) + json.dumps(kb.status().to_dict())
    embedded = "\n".join(emb.calls)
    stored = state_bytes(ws)
    for name, secret in secrets.items():
        assert secret not in embedded, name
        assert secret not in shown, name
        assert secret.encode() not in stored, name
    db = sqlite3.connect(ws / ".workos/.kb/manifest.sqlite3")
    (meta,) = db.execute("SELECT metadata FROM sources WHERE path LIKE '%notes.md'").fetchone()
    assert json.loads(meta)["deploy_token"] == "[secret: github-pat]"


def test_redaction_keeps_every_line_number(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    write_notes(ws)
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kb.index()
        hit = kb.search("Rotate the payments credentials every 90 days", k=1, mode="bm25")[0]
    lines = (ws / hit.path).read_text().splitlines()
    assert lines[hit.start_line - 1 : hit.end_line] == hit.text.splitlines()


@pytest.mark.parametrize("mode", ["skip-file", "off"])
def test_secrets_mode(tmp_path: Path, mode: str) -> None:
    ws = small_workspace(tmp_path)
    secrets = write_notes(ws)
    (ws / "kb.toml").write_text(f'[secrets]\nmode = "{mode}"\n')
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        report = kb.index()
        indexed = set(kb.engine.reader().sources())
    assert report.redacted == []
    if mode == "skip-file":
        (skip,) = [s for s in report.skipped if s.path.endswith("notes.md")]
        assert skip.reason.startswith("holds 4 secret(s): github-pat (line 3), aws-access-key (line 9)")
        assert ".workos/context/notes.md" not in indexed and secrets["aws"].encode() not in state_bytes(ws)
    else:
        assert ".workos/context/notes.md" in indexed and secrets["aws"].encode() in state_bytes(ws)


def test_allow_list_keeps_known_false_positives(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    secrets = write_notes(ws)
    (ws / "kb.toml").write_text(f'[secrets]\nallow = ["hunter2", "re:^{secrets["aws"][:8]}"]\n')
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kinds = [r.kind for r in kb.index().redacted]
    assert kinds == ["github-pat", "private-key"]


def test_turning_redaction_on_purges_what_was_indexed_before(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    secrets = write_notes(ws)
    (ws / "kb.toml").write_text('[secrets]\nmode = "off"\n')
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        kb.index()
    (ws / "kb.toml").unlink()
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        report = kb.index()
        assert report.rebuilt and len(report.redacted) == 4
        texts = " ".join(c.text + c.embed_text for c in kb.engine.reader().iter_chunks())
    assert secrets["aws"] not in texts and secrets["key"] not in texts


def test_a_dump_of_secrets_is_skipped_not_half_redacted(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    rng = random.Random(1)
    keys = [
        "AKIA" + "".join(rng.choice(string.ascii_uppercase + "234567") for _ in range(16))
        for _ in range(10_100)
    ]
    (ws / "projects/prds/dump.md").write_text("# Keys\n\n" + "\n".join(keys) + "\n")
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        report = kb.index()
    (skip,) = [s for s in report.skipped if s.path.endswith("dump.md")]
    assert skip.reason.startswith("secret scan gave up (more than 10000 credentials")
    assert keys[0].encode() not in state_bytes(ws)


@pytest.mark.slow
def test_search_and_ask_never_show_the_secrets(indexed: Path) -> None:
    """The issue's repro, with the real model, through the CLI: kb index --json, kb search, kb ask."""
    secrets = write_notes(indexed)
    r = run_kb("index", "--json", "--workspace", indexed)
    assert r.returncode == 0, r.stderr
    redacted = json.loads(r.stdout)["redacted"]
    assert {"path": ".workos/context/notes.md", "line": 9, "kind": "aws-access-key"} in redacted
    text = run_kb("index", "--workspace", indexed)
    assert "Redacted" not in text.stdout  # nothing read again: nothing redacted now
    search = run_kb("search", "AWS key for the payments service", "--workspace", indexed)
    ask = run_kb("ask", "what is the private key?", "--workspace", indexed, "--json")
    asked = run_kb("ask", "What is the admin password for prod access?", "--workspace", indexed)
    assert search.returncode == 0 and "notes.md" in search.stdout, search.stderr
    assert ask.returncode in (0, 3) and asked.returncode in (0, 3), ask.stderr
    for out in (r.stdout, search.stdout, ask.stdout, asked.stdout, search.stderr, ask.stderr):
        for name, secret in secrets.items():
            assert secret not in out, name
    assert "[secret: " in search.stdout + ask.stdout + asked.stdout


# --- items 8 and 9: discovery -----------------------------------------------------------------------------


def test_a_file_name_with_a_newline_is_reported_as_skipped(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    (ws / "projects/prds/evil\nname.md").write_text("# Evil\n\nA name with a newline.\n")
    cands, skipped = discover(ws, DEFAULT_INCLUDE)
    assert all("\n" not in c.path for c in cands)
    (skip,) = [s for s in skipped if "evil" in s.path]
    assert skip.path == "projects/prds/evil\\nname.md" and "newline" in skip.reason
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        assert "projects/prds/evil\\nname.md" in [s.path for s in kb.index().skipped]


def test_a_hard_link_to_a_file_outside_the_workspace_is_not_indexed(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    private = tmp_path / "private" / "salaries.md"
    private.parent.mkdir()
    private.write_text("# Salaries\n\nAda earns a great deal.\n")
    os.link(private, ws / "projects/prds/linked.md")
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        report = kb.index()
        assert "projects/prds/linked.md" not in kb.engine.reader().sources()
    (skip,) = [s for s in report.skipped if s.path == "projects/prds/linked.md"]
    assert skip.reason.startswith("has 2 hard links") and "follow_hardlinks" in skip.reason
    (ws / "kb.toml").write_text("follow_hardlinks = true\n")
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        assert "projects/prds/linked.md" in kb.index().added


# --- item 10: amplification -------------------------------------------------------------------------------

_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 * 1024 ** 3, 3 * 1024 ** 3))
from ingest.chunking import chunk_document
from ingest.loaders import LoadError, load_document
from kb.backends.model_folder import ModelFolder
tok = ModelFolder("st:all-MiniLM-L6-v2").tokenizer()
count = lambda texts: [len(e.ids) for e in tok.encode_batch(list(texts))]
count(["warm up"])
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    chunks = chunk_document(load_document(data, "markdown"), count, 256)
    result = {"chunks": len(chunks), "max_tokens": max((count([c.embed_text])[0] for c in chunks), default=0)}
except LoadError as exc:
    result = {"error": str(exc)}
result["seconds"] = time.perf_counter() - t0
result["rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(result))
"""

ATTACKS = {
    # the issue's file: 3,000 lines of ever deeper blockquotes, 4.5 MB (22,058 chunks, 106 s, 2.5 GB before)
    "nested-blockquotes": "\n".join(">" * i + f" level {i}" for i in range(1, 3001)),
    "spaced-blockquotes": "\n".join("> " * i + f"level {i}" for i in range(1, 2122)),
    "punctuation-line": "-" * 4_500_000,  # tokenizing it whole took 46 s and 2.4 GB
    "punctuation-words": "- " * 2_250_000,
    "table-rules": "|---|---|\n" * 450_000,
}


def chunk_in_child(path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{path.name}: {result}")
    return result


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_amplification_is_bounded(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.md"
    path.write_text(ATTACKS[name])
    assert 4_400_000 <= path.stat().st_size <= 4_600_000
    result = chunk_in_child(path)
    assert result["seconds"] < SECONDS and result["rss_mb"] < RSS_MB
    if name.endswith("blockquotes"):
        assert 10 <= result["chunks"] <= 100 and result["max_tokens"] <= 256
    else:
        assert result.get("chunks", 0) == 0 or "error" in result  # nothing to find in it


def test_a_document_over_the_chunk_cap_is_skipped(tmp_path: Path) -> None:
    paragraphs = ["a " + "- " * 200 for _ in range(300)]  # 300 chunks for 300 letters: cap 200
    doc = load_document("\n\n".join(paragraphs).encode(), "markdown")
    with pytest.raises(LoadError, match=r"^produces 300 chunks \(cap 200\)$"):
        chunk_document(doc, FakeEmbedder().count_tokens, 256)
    ws = small_workspace(tmp_path)
    (ws / "projects/prds/amplify.md").write_text("\n\n".join(paragraphs))
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        report = kb.index()
    assert ("projects/prds/amplify.md", "produces 300 chunks (cap 200)") in [
        (s.path, s.reason) for s in report.skipped
    ]


def test_blockquote_markers_are_structure_not_content() -> None:
    doc = load_document(b"# Q\n\n> > > Deeply quoted advice about retries.\n> > > And backoff.\n", "markdown")
    (chunk,) = chunk_document(doc, FakeEmbedder().count_tokens, 256)
    assert chunk.text == "# Q\n\n> > > Deeply quoted advice about retries.\n> > > And backoff."  # verbatim
    assert chunk.embed_text == "Q\n# Q\n\nDeeply quoted advice about retries.\nAnd backoff."  # no markers


# --- items 5 and 12: kb resources import --------------------------------------------------------------------


def import_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    src = tmp_path / "src"
    src.mkdir()
    (src / ".env").write_text("TOKEN=1\n")
    (src / "credentials.md").write_text("# creds\n")
    (src / "id_rsa.txt").write_text("# key\n")
    (src / "notes").write_text("no extension\n")
    (src / "link.txt").symlink_to("/etc/hostname")
    (src / "empty").mkdir()
    (src / "empty" / "data.bin").write_bytes(b"\x00\x01")
    return {
        "no extension": (src / "notes", "of a type kb does not import (no extension)"),
        "/etc/hostname": (Path("/etc/hostname"), "of a type kb does not import (no extension)"),
        ".env": (src / ".env", "looks like a secret"),
        "credentials.md": (src / "credentials.md", "looks like a secret"),
        "id_rsa.txt": (src / "id_rsa.txt", "looks like a secret"),
        ".txt symlink": (src / "link.txt", "is a symlink"),
        "no eligible files": (src / "empty", "no markdown, text, HTML or PDF files"),
        "/dev/zero": (Path("/dev/zero"), "is not a regular file"),
    }


def test_resources_import_refuses_in_one_line(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    cases = import_cases(tmp_path)
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        for path, message in cases.values():
            if not path.exists():
                continue
            with pytest.raises(ConfigError, match=re.escape(message)):
                kb.import_resource(path, "https://example.org/copy")
            assert not (ws / ".workos/resources").exists() or not any(
                (ws / ".workos/resources").rglob("*.md")
            )
    r = run_kb(
        "resources", "import", cases["/dev/zero"][0], "--url", "https://example.org/x", "--workspace", ws
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "is not a regular file" in r.stderr
