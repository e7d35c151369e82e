"""Bad files end to end: the real KnowledgeBase (bundled model, real Chroma) indexes what it can, skips
the rest with a reason, never reads secrets and never leaves a half-written index."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from kb import KnowledgeBase
from kb.testing import give_to_nobody, unprivileged_folder

PAYMENTS = ".workos/context/payments.md"
ONCALL = ".workos/context/oncall.md"

PAYMENTS_TEXT = """# Payments

Refunds are accepted within a 45 day refund window after the purchase.

## Reconciliation

The ledger reconciliation job runs nightly at 02:00 UTC and compares balances with the bank.
"""

ONCALL_TEXT = """# On-call rotation

The on-call rotation changes every Monday; the incident commander pages the database team.
"""

SECRET_CANARY = "sk_live_CANARY_4f9a1c77"
OUTSIDE_CANARY = "OUTSIDE_CANARY_do_not_index"
MAX_FILE_MB = 0.001  # 1048 bytes: the good files are smaller, huge.md is 5 KB


@pytest.fixture(scope="session")
def shared_model_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the model for the whole run (the conftest's cache when there is one)."""
    try:
        return Path(request.getfixturevalue("model_cache"))
    except pytest.FixtureLookupError:
        return tmp_path_factory.mktemp("model-cache")


def open_kb(ws: Path, cache: Path) -> KnowledgeBase:
    return KnowledgeBase.open(ws, max_file_mb=MAX_FILE_MB, model_cache_dir=cache)


def index_with_deadline(kb: KnowledgeBase, fifo: Path | None = None, seconds: float = 120):
    """kb.index(), failing (not hanging) if a FIFO or anything else blocks it."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["report"] = kb.index()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if fifo is not None:  # release a reader stuck on the FIFO so the run can end
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        pytest.fail(f"kb.index() did not finish within {seconds} s")
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["report"]


def write_good_files(ws: Path) -> None:
    (ws / ".workos/context").mkdir(parents=True, exist_ok=True)
    (ws / PAYMENTS).write_text(PAYMENTS_TEXT, encoding="utf-8")
    (ws / ONCALL).write_text(ONCALL_TEXT, encoding="utf-8")
    assert (ws / PAYMENTS).stat().st_size < MAX_FILE_MB * 1024 * 1024


def garbage(seed: int, n: int = 600) -> bytes:
    data = bytearray(random.Random(seed).randrange(256) for _ in range(n))
    data[10] = data[200] = 0  # NUL bytes for sure
    return bytes(data)


def malformed_docx() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("word/readme.txt", "a zip file, but no Word document inside")
    return buf.getvalue()


EXPECTED_REASONS = {
    ".workos/context/binary.md": "binary",
    ".workos/context/empty.md": "empty",
    ".workos/context/legacy.txt": "UTF-8",
    ".workos/context/huge.md": "size cap",
    ".workos/context/outside.md": "outside",
    ".workos/context/pipe.md": "not a regular file",
    ".workos/context/.env": "secret",
    ".workos/context/report.pdf": "malformed PDF",
    ".workos/context/spec.docx": "malformed DOCX",
}


@pytest.fixture(scope="module")
def bad_ws(tmp_path_factory: pytest.TempPathFactory, shared_model_cache: Path):
    base = tmp_path_factory.mktemp("bad-inputs")
    ws = base / "ws"
    write_good_files(ws)
    ctx = ws / ".workos/context"
    (ctx / "binary.md").write_bytes(garbage(1))
    (ctx / "empty.md").write_bytes(b"")
    (ctx / "legacy.txt").write_bytes(
        "Résumé of the café meeting: the zorblax budget is approved.\n".encode("latin-1")
    )
    (ctx / "huge.md").write_text(
        "# Huge\n\n" + "The quarterly capacity plan repeats itself. " * 120, encoding="utf-8"
    )
    outside = base / "outside.md"
    outside.write_text(f"# Outside\n\n{OUTSIDE_CANARY} lives outside the workspace.\n", encoding="utf-8")
    (ctx / "outside.md").symlink_to(outside)
    os.mkfifo(ctx / "pipe.md")
    (ctx / ".env").write_text(f"STRIPE_SECRET_KEY={SECRET_CANARY}\n", encoding="utf-8")
    (ctx / "report.pdf").write_bytes(b"%PDF-1.4\n" + garbage(2, 300))
    (ctx / "spec.docx").write_bytes(malformed_docx())
    assert (ctx / "huge.md").stat().st_size > 5000

    kb = open_kb(ws, shared_model_cache)
    report = index_with_deadline(kb, fifo=ctx / "pipe.md")
    yield ws, kb, report
    kb.close()


def test_index_completes_and_reports_every_bad_file_with_a_reason(bad_ws) -> None:
    _, _, report = bad_ws
    reasons = {s.path: s.reason for s in report.skipped}
    for path, fragment in EXPECTED_REASONS.items():
        assert path in reasons, f"{path} was not reported as skipped: {sorted(reasons)}"
        assert fragment in reasons[path], (path, reasons[path])
    assert set(reasons) == set(EXPECTED_REASONS)  # and nothing good was skipped
    assert len(report.skipped) == len(reasons)  # each bad file reported once


def test_good_files_are_indexed_and_searchable(bad_ws) -> None:
    _, kb, report = bad_ws
    assert sorted(report.added) == [ONCALL, PAYMENTS]
    status = kb.status()
    assert [s.path for s in status.sources] == [ONCALL, PAYMENTS]
    assert all(s.chunks > 0 for s in status.sources)
    assert status.chunks_count == report.chunks_total
    hits = kb.search("How long is the refund window?", k=3)
    assert hits and hits[0].path == PAYMENTS
    assert "45 day refund window" in hits[0].text
    hits = kb.search("who is on call this week", k=3)
    assert hits[0].path == ONCALL


def test_secret_and_outside_text_is_in_no_chunk(bad_ws) -> None:
    _, kb, _ = bad_ws
    manifest, store = kb.engine.ready()
    texts = [row.text + "\n" + row.embed_text for row in manifest.iter_chunks()]
    assert texts, "the index has chunks"
    for canary in (SECRET_CANARY, OUTSIDE_CANARY, "STRIPE_SECRET_KEY", "zorblax", "Résumé"):
        assert not any(canary in t for t in texts), canary
    for query in ("STRIPE_SECRET_KEY stripe secret key", OUTSIDE_CANARY, "zorblax budget café"):
        for hit in kb.search(query, k=10):
            assert hit.path in (PAYMENTS, ONCALL)
            assert SECRET_CANARY not in hit.text and OUTSIDE_CANARY not in hit.text
    assert manifest.all_chunk_ids() == store.ids()  # Chroma holds exactly what the manifest knows


def test_reindex_with_the_same_bad_files_is_stable(bad_ws, shared_model_cache: Path) -> None:
    ws, _, first = bad_ws
    kb = open_kb(ws, shared_model_cache)
    try:
        again = index_with_deadline(kb, fifo=ws / ".workos/context/pipe.md")
        assert again.chunks_embedded == 0 and not (again.added or again.updated or again.removed)
        assert again.unchanged == 2
        assert {s.path for s in again.skipped} == {s.path for s in first.skipped}
    finally:
        kb.close()


def test_good_file_turned_to_garbage_is_skipped_and_the_index_stays_whole(
    tmp_path: Path, shared_model_cache: Path
) -> None:
    ws = tmp_path / "ws"
    write_good_files(ws)
    kb = open_kb(ws, shared_model_cache)
    try:
        first = index_with_deadline(kb)
        assert sorted(first.added) == [ONCALL, PAYMENTS] and not first.skipped
        assert kb.search("refund window", k=1)[0].path == PAYMENTS
    finally:
        kb.close()

    (ws / PAYMENTS).write_bytes(garbage(3))  # same path, now binary
    kb = open_kb(ws, shared_model_cache)
    try:
        second = index_with_deadline(kb)
        reasons = {s.path: s.reason for s in second.skipped}
        assert "binary" in reasons.get(PAYMENTS, ""), reasons
        assert PAYMENTS not in second.updated and PAYMENTS not in second.added
        manifest, store = kb.engine.ready()
        assert manifest.all_chunk_ids() == store.ids()  # no half-written state
        hits = kb.search("who is on call this week", k=3)
        assert hits and hits[0].path == ONCALL  # search still works
        assert ONCALL in [s.path for s in kb.status().sources]
    finally:
        kb.close()


def test_garbage_file_stops_being_cited(tmp_path: Path, shared_model_cache: Path) -> None:
    ws = tmp_path / "ws"
    write_good_files(ws)
    with open_kb(ws, shared_model_cache) as kb:
        index_with_deadline(kb)
    (ws / PAYMENTS).write_bytes(garbage(4))
    with open_kb(ws, shared_model_cache) as kb:
        index_with_deadline(kb)
        cited = [h.path for h in kb.search("How long is the refund window?", k=5)]
        assert PAYMENTS not in cited  # its text is gone from the file: a citation of it would be false
        assert PAYMENTS not in [s.path for s in kb.status().sources]


def test_emptied_file_is_removed_from_the_index(tmp_path: Path, shared_model_cache: Path) -> None:
    ws = tmp_path / "ws"
    write_good_files(ws)
    with open_kb(ws, shared_model_cache) as kb:
        index_with_deadline(kb)
    (ws / PAYMENTS).write_bytes(b"")
    with open_kb(ws, shared_model_cache) as kb:
        report = index_with_deadline(kb)
        assert {s.path: s.reason for s in report.skipped}.get(PAYMENTS) == "empty file"
        assert report.removed == [PAYMENTS]
        assert [s.path for s in kb.status().sources] == [ONCALL]
        assert all(h.path == ONCALL for h in kb.search("refund window", k=5))


UNPRIVILEGED_INDEX = """
import json, os, sys
from pathlib import Path
from kb import KnowledgeBase
from kb.testing import drop_privileges
ws, warm, cache, locked = sys.argv[1:5]
with KnowledgeBase.open(Path(warm), model_cache_dir=Path(cache), max_file_mb=float(sys.argv[5])) as first:
    first.index()  # as root, once: every module imported and the model loaded
    embedder = first.embedder
drop_privileges()
try:
    open(locked, "rb").close()
    denied = False
except PermissionError:
    denied = True
with KnowledgeBase.open(Path(ws), embedder=embedder, max_file_mb=float(sys.argv[5])) as kb:
    report = kb.index().to_dict()
print(json.dumps({"uid": os.getuid(), "denied": denied, "report": report}))
"""


def test_unreadable_file_is_skipped(shared_model_cache: Path) -> None:
    """A real EACCES: the index runs in a child as the user nobody when the suite runs as root (as in CI)."""
    with unprivileged_folder() as parent:
        ws, warm = parent / "ws", parent / "warm"
        write_good_files(ws)
        (warm / ".workos/context").mkdir(parents=True)
        (warm / ".workos/context/warm.md").write_text("# Warm\n\nLoads the model.\n", encoding="utf-8")
        locked = ws / ".workos/context/locked.md"
        locked.write_text("# Locked\n\nPrivate notes.\n", encoding="utf-8")
        give_to_nobody(ws)
        locked.chmod(0)
        args = [str(ws), str(warm), str(shared_model_cache), str(locked), str(MAX_FILE_MB)]
        out = subprocess.run(
            [sys.executable, "-c", UNPRIVILEGED_INDEX, *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HOME": str(parent)},
        )
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["uid"] != 0 and data["denied"], "the child really cannot read the file"
    report = data["report"]
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons[".workos/context/locked.md"] == "permission denied"
    assert sorted(report["paths"]["added"]) == [ONCALL, PAYMENTS]


def test_previously_indexed_file_that_becomes_unreadable_keeps_its_content(
    tmp_path: Path, shared_model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A permission problem may be passing: the file is reported, and its indexed text stays searchable.
    (Runs as root too: the refusal is simulated through os.access, which discovery consults.)"""
    ws = tmp_path / "ws"
    write_good_files(ws)
    with open_kb(ws, shared_model_cache) as kb:
        index_with_deadline(kb)
    target = (ws / PAYMENTS).resolve()
    (ws / PAYMENTS).write_text(PAYMENTS_TEXT + "\nA new paragraph nobody may read yet.\n", encoding="utf-8")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m, *a, **kw: False if Path(p) == target else real_access(p, m)
    )
    with open_kb(ws, shared_model_cache) as kb:
        report = index_with_deadline(kb)
        assert {s.path: s.reason for s in report.skipped}.get(PAYMENTS) == "permission denied"
        assert not report.removed
        assert kb.search("How long is the refund window?", k=1)[0].path == PAYMENTS
    monkeypatch.undo()
    with open_kb(ws, shared_model_cache) as kb:  # readable again: the change is picked up
        report = index_with_deadline(kb)
        assert report.updated == [PAYMENTS] and not report.skipped
