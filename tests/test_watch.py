"""kb watch: real watchdog, real files, real processes.

* ``kb watch`` as a subprocess with the real bundled model: edits, renames and deletes become visible to
  ``kb search`` in another process; one owner (a second watcher and ``kb index`` are handled); SIGTERM stops
  it cleanly; a workspace moved away stops it with a clear message.
* A :class:`kb.serve.watcher.Watcher` on a thread with the FakeEmbedder (real watchdog, real Chroma): what is
  embedded (nothing for renames, touches, same-content saves), atomic saves, moves in and out, folder
  renames and deletes, the polling fallback, the periodic reconcile; and, in a separate process, an inotify
  queue overflow."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kb import KnowledgeBase
from kb.serve.client import socket_path
from kb.testing import (
    READY,
    Background,
    FakeEmbedder,
    copy_workspace,
    kb_command,
    kb_watch,
    run_kb,
    small_workspace,
    wait_for,
    watcher_thread,
)

PRD = "projects/prds/notifications.md"
_SCRATCH = itertools.count()

# A watcher process with the fake embedder (fuzz and overflow tests: embedding quality is irrelevant there).
FAKE_WATCH = """
import sys
from kb import KnowledgeBase
from kb.testing import FakeEmbedder
from kb.cli.watch_render import log_to_stderr
log_to_stderr()
kb = KnowledgeBase.open(sys.argv[1], embedder=FakeEmbedder())
kb.watch(reconcile_every=float(sys.argv[2]))
"""


# --- helpers ----------------------------------------------------------------------------------------------
def start_fake_watch(ws: Path, log: Path, reconcile_every: float = 3600.0) -> Background:
    return Background([sys.executable, "-c", FAKE_WATCH, str(ws), str(reconcile_every)], log).wait_for_line()


def view(ws: Path) -> tuple[dict[str, tuple[str, tuple[str, ...]]], set[str]]:
    """Per source (content hash, chunk texts in order), and all chunk ids, read straight from the manifest."""
    db = sqlite3.connect(f"file:{ws / '.workos/.kb/manifest.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        hashes = dict(db.execute("SELECT path, content_hash FROM sources"))
        texts: dict[str, list[str]] = {p: [] for p in hashes}
        ids = set()
        for path, text, cid in db.execute("SELECT path, text, id FROM chunks ORDER BY path, ordinal"):
            texts.setdefault(path, []).append(text)
            ids.add(cid)
    finally:
        db.close()
    return {p: (h, tuple(texts[p])) for p, h in hashes.items()}, ids


def from_scratch(ws: Path, dest: Path) -> tuple[dict[str, tuple[str, tuple[str, ...]]], set[str]]:
    """Index a copy of ``ws``'s files (no index) from scratch with the fake embedder."""
    dest = dest / f"n{next(_SCRATCH)}"  # a fresh folder each time (Chroma caches clients per path)
    copy_workspace(ws, dest, symlinks=True)
    with KnowledgeBase.open(dest, embedder=FakeEmbedder()) as kb:
        kb.index()
    return view(dest)


def settle(ws: Path, scratch: Path, timeout: float = 60.0) -> None:
    """The barrier: wait until the watched index equals a from-scratch index of the same tree."""
    expected = from_scratch(ws, scratch)
    last: list[Any] = []

    def same() -> bool:
        try:
            got = view(ws)
        except sqlite3.Error:
            return False
        last[:] = [got]
        return got == expected

    try:
        wait_for(same, timeout, every=0.2)
    except AssertionError:
        got_sources, got_ids = last[0] if last else ({}, set())
        exp_sources, _ = expected
        stale = sorted(set(got_sources) - set(exp_sources))
        missing = sorted(set(exp_sources) - set(got_sources))
        differ = sorted(p for p in set(got_sources) & set(exp_sources) if got_sources[p] != exp_sources[p])
        raise AssertionError(
            f"index != from-scratch index: stale {stale}, missing {missing}, differ {differ}"
        ) from None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the real thing: `kb watch` with the bundled model, queried from other processes ----------------------
@pytest.mark.slow
def test_kb_watch_keeps_search_fresh_and_owns_the_index(indexed: Path, tmp_path: Path) -> None:
    proc = kb_watch(indexed, tmp_path / "watch.log")
    try:
        assert not run_kb("search", "x", "--workspace", str(indexed)).returncode
        # An edit's new unique word is returned by `kb search` in another process.
        with open(indexed / PRD, "a") as fh:
            fh.write("\n\n## Codename\n\nThe retention pipeline is called quokkafrost internally.\n")

        def top(query: str) -> list[str]:
            r = run_kb("search", query, "-k", "3", "--json", "--workspace", str(indexed))
            assert r.returncode == 0, r.stderr
            return [h["path"] for h in json.loads(r.stdout)["hits"] if "quokkafrost" in h["text"]]

        assert wait_for(lambda: top("quokkafrost pipeline codename"), 20) == [PRD]
        # A rename moves it and embeds nothing; the log line says so.
        os.rename(indexed / PRD, indexed / "projects/prds/notify.md")
        wait_for(lambda: top("quokkafrost pipeline codename") == ["projects/prds/notify.md"], 20)
        wait_for(
            lambda: (
                "renamed projects/prds/notifications.md -> projects/prds/notify.md · 0 chunks embedded"
                in proc.text()
            ),
            10,
        )
        # A delete stops it being returned.
        (indexed / "projects/prds/notify.md").unlink()
        wait_for(lambda: top("quokkafrost pipeline codename") == [], 20)

        st = json.loads(run_kb("status", "--json", "--workspace", str(indexed)).stdout)
        assert st["watcher"]["running"] is True and st["watcher"]["pid"] == proc.pid
        assert st["watcher"]["pending"] == 0 and st["watcher"]["mode"] == "inotify"
        assert st["watcher"]["served"] >= 5, "the searches above (and this status) were the watcher's"
        assert "notify.md" in st["watcher"]["last_event"]
        assert all(s["path"] != PRD for s in st["sources"])
        human = run_kb("status", "--workspace", str(indexed)).stdout
        assert f"running (pid {proc.pid}, inotify)" in human

        # One owner: `kb index` is routed to the watcher; a second `kb watch` is refused (exit 4).
        idx = run_kb("index", "--json", "--workspace", str(indexed))
        assert idx.returncode == 0, idx.stderr
        assert json.loads(idx.stdout)["chunks_embedded"] == 0
        second = run_kb("watch", "--workspace", str(indexed), timeout=60)
        assert (
            second.returncode == 4 and "already running" in second.stderr and str(proc.pid) in second.stderr
        )
        ask = run_kb(
            "ask", "How should we paginate the notifications API?", "--json", "--workspace", str(indexed)
        )
        assert ask.returncode in (0, 3), ask.stderr  # answered by the watcher (the PRD is gone)
    finally:
        code = proc.stop()
    assert code == 0, proc.text()
    assert "stopped" in proc.text() and "Traceback" not in proc.text()
    assert not socket_path(indexed / ".workos/.kb").exists()
    st = json.loads(run_kb("status", "--json", "--workspace", str(indexed)).stdout)
    assert st["watcher"]["running"] is False and st["watcher"]["pid"] == proc.pid
    # Nothing half-written: Chroma holds exactly the manifest's chunks.
    with KnowledgeBase.open(indexed) as kb:
        assert kb.engine.store.ids() == view(indexed)[1]


@pytest.mark.slow
def test_kb_watch_json_prints_one_object_per_reindex_on_stdout(indexed: Path, tmp_path: Path) -> None:
    """README: ``--json`` prints one ``{"paths": [[action, path]], "chunks_embedded", "ms", "reason"}`` per
    re-index; stdout holds nothing else (the log lines stay on stderr)."""
    out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(kb_command("watch", "--json", "--workspace", indexed), stdout=out, stderr=err)
    try:
        wait_for(lambda: READY in err_path.read_text() or proc.poll() is not None, 180)
        assert proc.poll() is None, err_path.read_text()
        with open(indexed / PRD, "a") as fh:
            fh.write("\n\n## Codename\n\nThe retention pipeline is called quokkafrost internally.\n")

        def objects() -> list[dict[str, Any]]:
            return [json.loads(line) for line in out_path.read_text().splitlines()]

        wait_for(lambda: len(objects()) >= 1, 30)
        os.rename(indexed / PRD, indexed / "projects/prds/notify.md")
        wait_for(lambda: len(objects()) >= 2, 30)
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0, err_path.read_text()
    first, second = objects()[:2]
    assert set(first) == {"paths", "chunks_embedded", "ms", "reason"}
    assert first["paths"] == [["updated", PRD]] and first["chunks_embedded"] == 1 and first["ms"] > 0
    assert second["paths"] == [["renamed", f"{PRD} -> projects/prds/notify.md"]]
    assert second["chunks_embedded"] == 0 and isinstance(second["reason"], str)
    assert "re-indexed: updated" in err_path.read_text(), "the log lines are on stderr"


@pytest.mark.slow
def test_workspace_moved_away_stops_with_a_clear_message(indexed: Path, tmp_path: Path) -> None:
    proc = kb_watch(indexed, tmp_path / "watch.log")
    moved = tmp_path / "moved-ws"
    shutil.move(str(indexed), str(moved))
    code = proc.wait(30)
    assert code == 1, proc.text()
    assert "was moved or deleted" in proc.text() and "kb watch --workspace" in proc.text()
    assert "Traceback" not in proc.text()
    assert not indexed.exists()  # nothing re-created at the old place
    # The moved index is intact and usable.
    hits = KnowledgeBase.open(moved).search("notification retention", k=3)
    assert hits and not list(moved.glob(".workos/.kb/*.tmp"))


# --- what is embedded, and event kinds (Watcher on a thread, fake embedder) -------------------------------
def test_no_embedding_for_renames_touches_and_unchanged_saves(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    (ws / "projects/prds/sub").mkdir()
    (ws / "projects/prds/sub/inner.md").write_text("# Inner\n\nEpsilon zeta.\n")
    with watcher_thread(ws) as (w, emb, events):
        emb.calls.clear()
        os.rename(ws / "projects/prds/doc0.md", ws / "projects/prds/renamed.md")
        os.utime(ws / "projects/prds/doc1.md")  # touch
        (ws / "projects/prds/doc2.md").write_text((ws / "projects/prds/doc2.md").read_text())  # same content
        write_atomic(ws / "projects/prds/doc3.md", (ws / "projects/prds/doc3.md").read_text())  # atomic, same
        os.rename(ws / "projects/prds/sub", ws / "projects/prds/sub2")  # folder rename
        os.rename(ws / ".workos/context/team.md", ws / "projects/prds/team.md")  # move across roots
        settle(ws, tmp_path / "scratch")
        assert emb.calls == [], emb.calls
        renamed = [p for e in events for a, p in e.paths if a == "renamed"]
        assert "projects/prds/doc0.md -> projects/prds/renamed.md" in renamed
        assert "projects/prds/sub/inner.md -> projects/prds/sub2/inner.md" in renamed
        # A real edit embeds only the chunk that changed.
        with open(ws / "projects/prds/doc1.md", "a") as fh:
            fh.write("\nOmega added.\n")
        settle(ws, tmp_path / "scratch")
        assert len(emb.calls) == 1 and "Omega added." in emb.calls[0]
        assert w.pending == 0 and w.status().last_error is None


def test_atomic_saves_moves_in_and_out_and_folder_deletes(tmp_path: Path) -> None:
    ws = small_workspace(tmp_path)
    (ws / "outside/incoming.md").write_text("# Incoming\n\nArrived from outside.\n")
    with watcher_thread(ws):
        write_atomic(ws / "projects/prds/doc1.md", "# Doc 1\n\nRewritten atomically.\n")
        os.rename(ws / "projects/prds/doc2.md", ws / "outside/doc2.md")  # out of the indexed tree
        os.rename(ws / "outside/incoming.md", ws / "projects/prds/incoming.md")  # into it
        (ws / "projects/prds/new/deep").mkdir(parents=True)
        (ws / "projects/prds/new/deep/a.md").write_text("# A\n\nNew folder file.\n")
        settle(ws, tmp_path / "scratch")
        shutil.rmtree(ws / "projects/prds/new")  # rm -r of a folder
        for i in range(30):  # a burst: created and deleted at once, and a file still being written
            (ws / f"projects/prds/burst{i}.md").write_text(f"# B{i}\n\nshort lived {i}\n")
        for i in range(30):
            (ws / f"projects/prds/burst{i}.md").unlink()
        with open(ws / "projects/prds/slow.md", "w") as fh:
            fh.write("# Slow\n\nFirst half, ")
            fh.flush()
            time.sleep(0.5)
            fh.write("second half.\n")
        settle(ws, tmp_path / "scratch")
        sources, _ = view(ws)
        assert "projects/prds/incoming.md" in sources and "projects/prds/doc2.md" not in sources
        assert (
            sources["projects/prds/slow.md"][1] and "second half" in sources["projects/prds/slow.md"][1][-1]
        )
        # Deleting a whole indexed root, then re-creating it, is followed too.
        shutil.rmtree(ws / ".workos/context")
        settle(ws, tmp_path / "scratch")
        (ws / ".workos/context").mkdir()
        (ws / ".workos/context/back.md").write_text("# Back\n\nContext is back.\n")
        settle(ws, tmp_path / "scratch")


def test_watch_limit_error_falls_back_to_polling(tmp_path: Path) -> None:
    class NoWatches:  # what watchdog raises when fs.inotify.max_user_watches is exhausted
        def schedule(self, *a: Any, **k: Any) -> None:
            raise OSError(28, "inotify watch limit reached")

        def start(self) -> None: ...

        def stop(self) -> None: ...

    ws = small_workspace(tmp_path)
    with watcher_thread(ws, observer_factory=NoWatches, poll_every=0.3) as (w, _, _):
        assert w.mode == "polling" and "inotify limit reached" in (w.last_error or "")
        (ws / "projects/prds/polled.md").write_text("# Polled\n\nFound by polling.\n")
        (ws / "projects/prds/doc0.md").unlink()
        settle(ws, tmp_path / "scratch", timeout=20)


def test_periodic_reconcile_catches_what_events_missed(tmp_path: Path) -> None:
    class Deaf:  # an observer that never reports anything
        def schedule(self, *a: Any, **k: Any) -> None: ...

        def start(self) -> None: ...

        def stop(self) -> None: ...

        def join(self, timeout: float | None = None) -> None: ...

    ws = small_workspace(tmp_path)
    with watcher_thread(ws, observer_factory=Deaf, reconcile_every=0.5) as (w, emb, _):
        assert w.mode == "inotify"
        emb.calls.clear()
        (ws / "projects/prds/missed.md").write_text("# Missed\n\nNo event for this one.\n")
        os.rename(ws / "projects/prds/doc1.md", ws / "projects/prds/doc1b.md")
        settle(ws, tmp_path / "scratch", timeout=20)
        assert len(emb.calls) == 1 and "No event for this one." in emb.calls[0]


@pytest.mark.slow
def test_inotify_overflow_triggers_a_rescan(tmp_path: Path) -> None:
    """SIGSTOP the watcher and make ~20k events: the kernel queue (16384) overflows for real."""
    ws = small_workspace(tmp_path)
    proc = start_fake_watch(ws, tmp_path / "watch.log")
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        proc.popen.send_signal(signal.SIGSTOP)
        n = 0
        for round_ in range(3):
            for i in range(limit // 9 + 200):
                (ws / f"projects/prds/f{i}.md").write_text(f"# F{i}\n\nround {round_} file {i}\n")
                n += 3
        proc.popen.send_signal(signal.SIGCONT)
        settle(ws, tmp_path / "scratch", timeout=180)
        assert "overflowed" in proc.text() and "rescanning" in proc.text()
    finally:
        proc.popen.send_signal(signal.SIGCONT)
        assert proc.stop() == 0


def test_survives_unreadable_files_and_failed_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission errors (we may run as root, where chmod cannot deny a read: the read itself is made to fail)
    keep a file's indexed content; a run that fails is reported and the next change is indexed."""
    import kb.index.indexer

    ws = small_workspace(tmp_path)
    real_read = kb.index.indexer.read_candidate
    denied: set[str] = set()

    def read(cand: Any, max_bytes: int) -> bytes:
        if cand.path in denied:
            raise PermissionError(13, "Permission denied")
        return real_read(cand, max_bytes)

    reports: list[Any] = []  # every run's report, appended once the run has committed
    recorded_run = kb.index.indexer.Indexer.run

    def recording(self: Any, *a: Any, **k: Any) -> Any:
        report = recorded_run(self, *a, **k)
        reports.append(report)
        return report

    def refused(path: str) -> bool:  # a run ended in which reading ``path`` was refused
        return any(
            (s.path, s.reason) == (path, "cannot read: Permission denied") for r in reports for s in r.skipped
        )

    monkeypatch.setattr(kb.index.indexer, "read_candidate", read)
    monkeypatch.setattr(kb.index.indexer.Indexer, "run", recording)
    with watcher_thread(ws) as (w, _, _):
        before = view(ws)[0]["projects/prds/doc1.md"]
        denied.add("projects/prds/doc1.md")
        (ws / "projects/prds/doc1.md").write_text("# Doc 1\n\nNew text nobody may read yet.\n")
        wait_for(lambda: refused("projects/prds/doc1.md"), 10)  # the denied read happened, its run ended
        assert view(ws)[0]["projects/prds/doc1.md"] == before  # kept, not dropped
        assert "projects/prds/doc1.md" not in reports[-1].removed
        denied.clear()
        os.utime(ws / "projects/prds/doc1.md")
        settle(ws, tmp_path / "scratch")

        calls = {"n": 0}
        real_run = kb.index.indexer.Indexer.run

        def flaky(self: Any, *a: Any, **k: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError(5, "Input/output error")
            return real_run(self, *a, **k)

        monkeypatch.setattr(kb.index.indexer.Indexer, "run", flaky)
        (ws / "projects/prds/doc2.md").write_text("# Doc 2\n\nFirst try fails.\n")
        wait_for(lambda: w.last_error and "I/O error" in w.last_error, 10)  # as StorageError words it
        (ws / "projects/prds/doc3.md").write_text("# Doc 3\n\nSecond change.\n")
        wait_for(
            lambda: (
                "projects/prds/doc3.md" in view(ws)[0]
                and "Second" in view(ws)[0]["projects/prds/doc3.md"][1][0]
            ),
            10,
        )
        assert w.status().running


def test_the_workspace_guard_says_when_kb_toml_changed_and_stops_when_the_folders_go(tmp_path: Path) -> None:
    """kb watch reads its settings once: a kb.toml edit is reported (once per change), never applied silently;
    a deleted index folder or a moved workspace stops it with the error that says what to do."""
    from kb.errors import StorageError, WorkspaceNotFoundError
    from kb.serve.support import WorkspaceGuard
    from kb.workspace import find_workspace

    (tmp_path / "ws/.workos/.kb").mkdir(parents=True)
    ws = find_workspace(tmp_path / "ws")
    guard = WorkspaceGuard(ws)
    assert guard.check() is None
    ws.config_path.write_text("top_k = 3\n", encoding="utf-8")
    changed = guard.check()
    assert changed and "kb.toml changed: restart kb watch" in changed
    assert guard.check() is None, "reported once per change"
    ws.state_dir.rmdir()
    with pytest.raises(StorageError, match="was deleted while kb watch was running"):
        guard.check()
    (tmp_path / "ws").rename(tmp_path / "moved")
    with pytest.raises(WorkspaceNotFoundError, match="kb watch --workspace NEW_PATH"):
        guard.check()
