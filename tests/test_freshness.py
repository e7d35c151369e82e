"""Fresh or flagged: with no ``kb watch`` running, a search or an answer first re-indexes what changed on disk
(a stat per file to find it), or, with ``--no-refresh``, says which sources are stale — and a quote that is no
longer at its cited lines is never shown as supported."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kb import KnowledgeBase
from kb.locks import file_lock
from kb.testing import run_kb, verify_citation

OLD = "We deploy the zanzibar service with Nomad on bare metal."
NEW = "We deploy the zanzibar service with Kubernetes on EKS since March."
QUESTION = "How do we deploy the zanzibar service?"


def stack(ws: Path, *lines: str) -> Path:
    path = ws / ".workos/context/stack.md"
    path.write_text("# Zanzibar\n\n" + "\n\n".join(lines) + "\n", encoding="utf-8")
    return path


def indexed_with_stack(indexed: Path) -> Path:
    stack(indexed, OLD, "The zanzibar service keeps its data in PostgreSQL.")
    with KnowledgeBase.open(indexed) as kb:
        kb.index()
    return indexed


def test_an_edit_after_kb_index_is_answered_from_the_new_text(indexed: Path) -> None:
    ws = indexed_with_stack(indexed)
    stack(ws, NEW, "The zanzibar service keeps its data in PostgreSQL.")
    kb = KnowledgeBase.open(ws)
    assert kb.engine.stale_paths() == [".workos/context/stack.md"]
    answer = kb.ask(QUESTION, persona="backend-engineer")
    assert answer.refreshed == [".workos/context/stack.md"] and answer.stale == []
    assert "Kubernetes on EKS" in answer.answer and "Nomad" not in answer.answer
    for c in answer.citations:
        assert verify_citation(ws, c.path, c.start_line, c.end_line, c.quote), c
    assert kb.engine.stale_paths() == []


def test_no_refresh_flags_stale_sources_and_never_shows_a_moved_quote(indexed: Path) -> None:
    ws = indexed_with_stack(indexed)
    stack(ws, NEW, "The zanzibar service keeps its data in PostgreSQL.")  # line 3 now says something else
    r = run_kb(
        "ask", QUESTION, "--persona", "backend-engineer", "--no-refresh", "--json", "--workspace", str(ws)
    )
    assert r.returncode in (0, 3), r.stderr
    data = json.loads(r.stdout)
    assert data["stale"] == [".workos/context/stack.md"] and data["refreshed"] == []
    assert "changed on disk since they were indexed" in r.stderr and ".workos/context/stack.md" in r.stderr
    assert "Nomad" not in data["answer"], "the old sentence is no longer at its lines: never shown"
    for c in data["citations"]:
        assert verify_citation(ws, c["path"], c["start_line"], c["end_line"], c["quote"]), c
    stack(ws, "A new first paragraph pushes everything down.", OLD)  # the old sentence moved to line 5
    r = run_kb("ask", QUESTION, "--no-refresh", "--json", "--workspace", str(ws))
    data = json.loads(r.stdout)
    assert all(c["path"] != ".workos/context/stack.md" or c["start_line"] != 3 for c in data["citations"])
    for c in data["citations"]:
        assert verify_citation(ws, c["path"], c["start_line"], c["end_line"], c["quote"]), c


def test_search_refreshes_or_reports_stale(indexed: Path) -> None:
    ws = indexed_with_stack(indexed)
    os.remove(ws / ".workos/context/stack.md")
    r = run_kb("search", "zanzibar deploy", "--no-refresh", "--json", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["stale"] == [".workos/context/stack.md"] and "warning:" in r.stderr
    r = run_kb("search", "zanzibar deploy", "--json", "--workspace", str(ws))
    data = json.loads(r.stdout)
    assert data["refreshed"] == [".workos/context/stack.md"] and data["stale"] == []
    assert all(h["path"] != ".workos/context/stack.md" for h in data["hits"])


def test_a_refresh_is_bounded_and_yields_to_another_writer(indexed: Path) -> None:
    ws = indexed_with_stack(indexed)
    stack(ws, NEW)
    kb = KnowledgeBase.open(ws, refresh_max_files=0)
    fresh = kb.freshen()
    assert fresh.stale == [".workos/context/stack.md"] and "refresh_max_files" in (fresh.reason or "")
    kb.close()
    with file_lock(
        ws / ".workos/.kb/write.lock", wait=False, record_pid=True
    ):  # another writer holds the index
        r = run_kb("ask", QUESTION, "--json", "--workspace", str(ws))
    assert r.returncode in (0, 3), r.stderr
    data = json.loads(r.stdout)
    assert data["stale"] == [".workos/context/stack.md"] and "Nomad" not in data["answer"]


def test_the_check_reads_no_file_and_sees_a_touch(indexed: Path) -> None:
    kb = KnowledgeBase.open(indexed)
    assert kb.engine.stale_paths() == []
    prd = indexed / "projects/prds/usage-export.md"
    st = prd.stat()
    os.utime(prd, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert kb.engine.stale_paths() == ["projects/prds/usage-export.md"]
    fresh = kb.freshen()
    assert fresh.refreshed == ["projects/prds/usage-export.md"] and fresh.stale == []
    assert kb.engine.stale_paths() == []


def test_a_long_lived_reader_walks_the_tree_only_when_something_changed(
    indexed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KnowledgeBase kept open (no kb watch) compares a stat of what its last walk saw instead of walking
    the workspace before every search, and still sees every change: an edit, a new file in a new folder, a
    removal, and an edit made while a walk was running (the stamp is taken before the walk it trusts)."""
    from kb.index import changes

    walks: list[int] = []
    during_walk: list[Path] = []
    real = changes.discover

    def counted(*args: Any, **kwargs: Any) -> Any:
        walks.append(1)
        found = real(*args, **kwargs)
        for path in during_walk:  # changed after the walk looked at it
            bump(path)
        during_walk.clear()
        return found

    def bump(path: Path) -> None:
        path.write_text(path.read_text(encoding="utf-8") + "\nThe quasar budget is 12 units.\n")
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    monkeypatch.setattr(changes, "discover", counted)
    kb = KnowledgeBase.open(indexed)
    for _ in range(4):
        assert kb.freshen().refreshed == []
    assert len(walks) == 2, "a walk learns the tree, the next one confirms the stamp taken before it"

    prd = indexed / "projects/prds/usage-export.md"
    bump(prd)
    assert kb.freshen().refreshed == ["projects/prds/usage-export.md"]
    new = indexed / "projects/prds/later/extra.md"
    new.parent.mkdir()
    new.write_text("# Extra\n\nThe nebula budget is 7 units.\n", encoding="utf-8")
    assert kb.freshen().refreshed == ["projects/prds/later/extra.md"]
    new.unlink()
    assert kb.freshen().refreshed == ["projects/prds/later/extra.md"]
    for _ in range(2):
        kb.freshen()
    before = len(walks)
    other = indexed / "projects/prds/notifications.md"
    other.chmod(0o640)  # a change that the index does not see (its ctime): the next search walks, finds
    during_walk.append(prd)  # nothing, and meanwhile prd changes after the walk looked at it
    assert kb.freshen().refreshed == []
    assert kb.freshen().refreshed == ["projects/prds/usage-export.md"]
    assert len(walks) == before + 2
    hits = kb.search("quasar budget units", k=3)
    assert any(h.path == "projects/prds/usage-export.md" for h in hits)
    kb.close()
