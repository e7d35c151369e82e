"""ingest.discovery: which files of a workspace are read, and why the others are not (real files)."""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ingest.discovery import Candidate, discover, discover_paths, read_candidate
from ingest.layout import DEFAULT_INCLUDE, source_type_of
from kb.testing import give_to_nobody, unprivileged_folder


def write(root: Path, rel: str, content: str | bytes = "# Title\n\nSome text.\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def run(
    root: Path,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    max_bytes: int = 10_000_000,
):
    cands, skipped = discover(root, DEFAULT_INCLUDE + (include or []), exclude, max_bytes)
    return {c.path: c for c in cands}, {s.path: s.reason for s in skipped}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    write(root, ".workos/context/team.md", "# Team\n\nWe own billing.\n")
    write(root, ".workos/context/sub/deep/notes.txt", "deep notes\n")
    write(root, "projects/prds/checkout.md", "# Checkout PRD\n")
    write(root, ".workos/resources/guide.html", "<h1>Guide</h1>")
    write(root, "README.md", "# not indexed: outside the include globs\n")
    write(root, "other/stray.md", "stray\n")
    write(root, ".workos/personas/pm.md", "persona file, not an indexed source\n")
    return root


# --- include / exclude ------------------------------------------------------------------------------------


def test_default_includes_pick_the_three_source_folders_and_nothing_else(ws: Path) -> None:
    cands, skipped = run(ws)
    assert sorted(cands) == [
        ".workos/context/sub/deep/notes.txt",
        ".workos/context/team.md",
        ".workos/resources/guide.html",
        "projects/prds/checkout.md",
    ]
    # Files outside the includes are neither indexed nor reported as skipped (they were never candidates).
    assert skipped == {}
    assert cands[".workos/context/team.md"].kind == "markdown"
    assert cands[".workos/context/sub/deep/notes.txt"].kind == "text"
    assert cands[".workos/resources/guide.html"].kind == "html"


def test_paths_are_relative_posix_and_sorted_and_abspath_is_in_the_workspace(ws: Path) -> None:
    cands, skipped = discover(ws, DEFAULT_INCLUDE)
    paths = [c.path for c in cands]
    assert paths == sorted(paths)
    for c in cands:
        assert not c.path.startswith("/") and "\\" not in c.path and "//" not in c.path
        assert c.abspath.resolve() == (ws / c.path).resolve()
        assert c.size == (ws / c.path).stat().st_size
        assert c.mtime_ns == (ws / c.path).stat().st_mtime_ns


def test_root_given_with_dotdot_gives_the_same_relative_paths(ws: Path) -> None:
    cands, _ = discover(ws / "other" / "..", DEFAULT_INCLUDE)
    assert ".workos/context/team.md" in [c.path for c in cands]


def test_extra_include_globs(ws: Path) -> None:
    write(ws, "docs/a.md")
    write(ws, "docs/sub/b.md")
    write(ws, "docs/sub/c.txt")
    cands, _ = run(ws, include=["docs/*.md"])
    assert "docs/a.md" in cands
    assert "docs/sub/b.md" not in cands  # '*' does not cross folders
    cands, _ = run(ws, include=["docs/**/*.md"])
    assert {"docs/a.md", "docs/sub/b.md"} <= set(cands)  # '**/' spans zero or more folders
    assert "docs/sub/c.txt" not in cands


def test_include_with_leading_dot_slash_matches_dot_folders(ws: Path) -> None:
    # "./.workos/notes/**" must mean ".workos/notes/**" (lstrip("./") would turn it into "workos/...").
    write(ws, ".workos/notes/n.md")
    write(ws, "workos/notes/decoy.md")
    cands, _ = run(ws, include=["./.workos/notes/**"])
    assert ".workos/notes/n.md" in cands
    assert "workos/notes/decoy.md" not in cands


def test_exclude_globs_for_files_and_folders(ws: Path) -> None:
    write(ws, ".workos/context/drafts/wip.md")
    write(ws, ".workos/context/drafts/deeper/wip2.md")
    write(ws, ".workos/context/old.bak.md")
    cands, skipped = run(ws, exclude=["**/drafts/**", "**/*.bak.md"])
    assert not any("drafts" in p for p in cands)
    assert ".workos/context/old.bak.md" not in cands
    assert ".workos/context/team.md" in cands
    assert not any("drafts" in p for p in skipped)


def test_excluded_folder_is_not_even_walked(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(ws, ".workos/context/archive/x.md")
    listed: list[str] = []
    real_scandir = os.scandir

    def spy(path=".", *a, **kw):  # os.walk lists each folder it enters with scandir
        listed.append(os.fspath(path))
        return real_scandir(path, *a, **kw)

    monkeypatch.setattr(os, "scandir", spy)
    cands, _ = run(ws, exclude=[".workos/context/archive"])
    assert ".workos/context/archive/x.md" not in cands
    assert listed, "the spy saw no folder listing: the test would prove nothing"
    assert not any(p.endswith("archive") for p in listed)
    assert not any(p.endswith("other") for p in listed)  # not under any include: pruned too


def test_state_and_vcs_folders_are_pruned_even_when_included(ws: Path) -> None:
    write(ws, ".workos/.kb/chroma/leak.md", "index state")
    write(ws, ".workos/context/.kb/state.md", "index state")
    write(ws, ".workos/context/.git/HEAD.md", "vcs")
    write(ws, ".workos/context/node_modules/pkg/readme.md", "dependency")
    cands, skipped = run(ws, include=["**/*.md"])
    assert not any(".kb/" in p or ".git/" in p or "node_modules/" in p for p in cands)
    assert not any(".kb/" in p for p in skipped)
    assert "README.md" in cands  # the '**/*.md' include itself works


# --- skip reasons -----------------------------------------------------------------------------------------

SECRET_NAMES = [
    ".env",
    ".env.local",
    "server.pem",
    "tls.key",
    "id_rsa",
    "id_ed25519.pub",
    "credentials.json",
    "credentials.txt",
    "id_rsa.md",
    "prod.env",
]


def test_secret_files_are_skipped_by_name(ws: Path) -> None:
    for name in SECRET_NAMES:
        write(ws, f".workos/context/{name}", "API_KEY=sk-live-DO-NOT-READ\n")
    cands, skipped = run(ws)
    for name in SECRET_NAMES:
        rel = f".workos/context/{name}"
        assert rel not in cands
        assert "secret" in skipped[rel], (rel, skipped[rel])


def test_secret_files_are_never_opened(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_NAMES:
        write(ws, f".workos/context/{name}", "API_KEY=sk-live-DO-NOT-READ\n")
    write(ws, ".workos/context/secrets/.env", "TOKEN=x\n")
    (ws / ".workos/context/env-link.md").symlink_to(ws / ".workos/context/.env")

    opened: list[str] = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def rec(real):
        def wrapper(file, *a, **kw):
            if isinstance(file, (str, bytes, os.PathLike)):
                opened.append(os.path.abspath(os.fsdecode(file)))
            return real(file, *a, **kw)

        return wrapper

    monkeypatch.setattr(builtins, "open", rec(real_open))
    monkeypatch.setattr(io, "open", rec(real_io_open))
    monkeypatch.setattr(os, "open", rec(real_os_open))
    try:
        cands, skipped = discover(ws, DEFAULT_INCLUDE)
        contents = {c.path: read_candidate(c, 10_000_000) for c in cands}
    finally:
        monkeypatch.undo()

    assert contents[".workos/context/team.md"] == b"# Team\n\nWe own billing.\n"
    assert str((ws / ".workos/context/team.md").resolve()) in [os.path.realpath(p) for p in opened], (
        "the recorder saw no open of a good file: it would not catch a secret being opened either"
    )
    secret_paths = {str((ws / ".workos/context" / n).resolve()) for n in SECRET_NAMES}
    secret_paths.add(str((ws / ".workos/context/secrets/.env").resolve()))
    assert not secret_paths & {os.path.realpath(p) for p in opened}
    assert not any(b"DO-NOT-READ" in data for data in contents.values())
    reasons = {s.path: s.reason for s in skipped}
    assert reasons[".workos/context/env-link.md"].startswith("symlink to a secret")
    assert ".workos/context/env-link.md" not in contents


def test_empty_file(ws: Path) -> None:
    write(ws, ".workos/context/empty.md", b"")
    cands, skipped = run(ws)
    assert ".workos/context/empty.md" not in cands
    assert skipped[".workos/context/empty.md"] == "empty file"


def test_oversized_file_and_the_cap_boundary(ws: Path) -> None:
    write(ws, ".workos/context/at_cap.md", b"x" * 100)
    write(ws, ".workos/context/over_cap.md", b"x" * 101)
    cands, skipped = run(ws, max_bytes=100)
    assert ".workos/context/at_cap.md" in cands
    assert ".workos/context/over_cap.md" not in cands
    reason = skipped[".workos/context/over_cap.md"]
    assert "size cap" in reason and "max_file_mb" in reason


def test_unsupported_extensions(ws: Path) -> None:
    write(ws, ".workos/context/diagram.png", b"\x89PNG\r\n")
    write(ws, ".workos/context/data.csv", "a,b\n1,2\n")
    write(ws, ".workos/context/Makefile", "all:\n")
    write(ws, ".workos/context/UPPER.MD", "# upper-case suffix is fine\n")
    cands, skipped = run(ws)
    assert skipped[".workos/context/diagram.png"] == "unsupported file type '.png'"
    assert skipped[".workos/context/data.csv"] == "unsupported file type '.csv'"
    assert "no extension" in skipped[".workos/context/Makefile"]
    assert cands[".workos/context/UPPER.MD"].kind == "markdown"


def test_symlink_to_a_file_outside_the_workspace_is_skipped(ws: Path, tmp_path: Path) -> None:
    outside = write(tmp_path, "outside/private.md", "# Private\n\nnot part of the workspace\n")
    (ws / ".workos/context/private.md").symlink_to(outside)
    cands, skipped = run(ws)
    assert ".workos/context/private.md" not in cands
    assert "outside" in skipped[".workos/context/private.md"]


def test_relative_symlink_escaping_the_workspace_is_skipped(ws: Path, tmp_path: Path) -> None:
    write(tmp_path, "elsewhere.md", "outside\n")
    (ws / ".workos/context/escape.md").symlink_to("../../../elsewhere.md")
    assert (ws / ".workos/context/escape.md").read_text() == "outside\n"  # the link really resolves
    cands, skipped = run(ws)
    assert ".workos/context/escape.md" not in cands
    assert "outside" in skipped[".workos/context/escape.md"]


def test_symlink_to_a_file_inside_the_workspace_is_indexed(ws: Path) -> None:
    (ws / ".workos/context/alias.md").symlink_to("../../projects/prds/checkout.md")
    (ws / ".workos/context/stray-link.md").symlink_to(ws / "other/stray.md")
    cands, skipped = run(ws)
    alias = cands[".workos/context/alias.md"]
    assert alias.kind == "markdown"
    assert alias.size == (ws / "projects/prds/checkout.md").stat().st_size
    assert read_candidate(alias, 1000) == b"# Checkout PRD\n"
    assert read_candidate(cands[".workos/context/stray-link.md"], 1000) == b"stray\n"
    assert ".workos/context/alias.md" not in skipped


def test_broken_symlink(ws: Path) -> None:
    (ws / ".workos/context/gone.md").symlink_to(ws / ".workos/context/does-not-exist.md")
    cands, skipped = run(ws)
    assert ".workos/context/gone.md" not in cands
    assert skipped[".workos/context/gone.md"] == "broken symlink"


def test_symlink_loop_is_reported_not_raised(ws: Path) -> None:
    (ws / ".workos/context/loop_a.md").symlink_to("loop_b.md")
    (ws / ".workos/context/loop_b.md").symlink_to("loop_a.md")
    cands, skipped = run(ws)
    assert ".workos/context/loop_a.md" in skipped and ".workos/context/loop_b.md" in skipped
    assert ".workos/context/team.md" in cands


def test_symlinked_folder_is_not_followed(ws: Path, tmp_path: Path) -> None:
    write(tmp_path, "outside_dir/a.md", "outside folder\n")
    (ws / ".workos/context/linked_out").symlink_to(tmp_path / "outside_dir", target_is_directory=True)
    (ws / ".workos/context/linked_in").symlink_to(ws / "other", target_is_directory=True)
    cands, skipped = run(ws)
    assert not any(p.startswith(".workos/context/linked_") for p in cands)
    assert "symlinked folder" in skipped[".workos/context/linked_out"]
    assert "not followed" in skipped[".workos/context/linked_in"]


def test_fifo_is_skipped_without_hanging(ws: Path) -> None:
    fifo = ws / ".workos/context/pipe.md"
    os.mkfifo(fifo)
    result: dict[str, object] = {}

    def target() -> None:
        result["value"] = run(ws)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout=20)
    if t.is_alive():  # unblock the stuck reader so the test run can finish, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("discover() blocked on a FIFO")
    cands, skipped = result["value"]  # type: ignore[misc]
    assert ".workos/context/pipe.md" not in cands
    assert "not a regular file" in skipped[".workos/context/pipe.md"]
    assert ".workos/context/team.md" in cands


def test_read_candidate_refuses_a_file_replaced_by_a_fifo(ws: Path) -> None:
    cands, _ = run(ws)
    cand = cands[".workos/context/team.md"]
    cand.abspath.unlink()
    os.mkfifo(cand.abspath)
    done: dict[str, BaseException] = {}

    def target() -> None:
        try:
            read_candidate(cand, 1000)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            done["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "read_candidate blocked on a FIFO"
    assert isinstance(done.get("exc"), OSError)
    assert "regular file" in str(done["exc"])


def test_read_candidate_refuses_a_file_that_grew_past_the_cap(ws: Path) -> None:
    write(ws, ".workos/context/grow.md", b"a" * 50)
    cands, _ = run(ws, max_bytes=100)
    cand: Candidate = cands[".workos/context/grow.md"]
    assert read_candidate(cand, 100) == b"a" * 50
    write(ws, ".workos/context/grow.md", b"a" * 500)
    with pytest.raises(OSError, match="grew beyond"):
        read_candidate(cand, 100)


UNPRIVILEGED_DISCOVER = """
import json, os, sys
from pathlib import Path
from ingest.discovery import discover
from ingest.layout import DEFAULT_INCLUDE
from kb.testing import drop_privileges
discover(Path(sys.argv[3]), DEFAULT_INCLUDE)  # as root, once: whatever discovery imports lazily is loaded now
drop_privileges()
try:
    open(sys.argv[2], "rb").close()
    denied = False
except PermissionError:
    denied = True
cands, skipped = discover(Path(sys.argv[1]), DEFAULT_INCLUDE)
print(json.dumps({"uid": os.getuid(), "denied": denied, "candidates": [c.path for c in cands],
                  "skipped": {s.path: s.reason for s in skipped}}))
"""


def test_unreadable_file_is_skipped_with_permission_denied() -> None:
    """A real EACCES: discovery runs in a child as the user nobody when the suite runs as root (as in CI),
    on a tree whose one file is chmod 000."""
    with unprivileged_folder() as parent:
        root = parent / "ws"
        write(root, ".workos/context/team.md", "# Team\n\nWe own billing.\n")
        locked = write(root, ".workos/context/locked.md", "locked\n")
        give_to_nobody(root)
        locked.chmod(0)
        warm = write(parent / "warm", ".workos/context/a.md").parents[2]
        cmd = [sys.executable, "-c", UNPRIVILEGED_DISCOVER, str(root), str(locked), str(warm)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["uid"] != 0 and data["denied"], "the child really cannot read the file"
    assert ".workos/context/locked.md" not in data["candidates"]
    assert data["skipped"][".workos/context/locked.md"] == "permission denied"
    assert ".workos/context/team.md" in data["candidates"]


def test_permission_denied_is_reported_when_access_is_refused(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs as root too: the OS's answer is simulated, the reporting is real."""
    locked = write(ws, ".workos/context/locked.md", "locked\n")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, *a, **kw: False if Path(p) == locked else real_access(p, mode)
    )
    cands, skipped = run(ws)
    assert ".workos/context/locked.md" not in cands
    assert skipped[".workos/context/locked.md"] == "permission denied"
    assert ".workos/context/team.md" in cands


# --- targeted discovery (kb watch) and the layout ---------------------------------------------------------


def test_discover_paths_gives_every_file_the_verdict_of_the_full_walk(ws: Path, tmp_path: Path) -> None:
    """``discover_paths`` (what ``kb watch`` runs on changed paths) uses discovery's own rules: naming every
    file of the tree gives exactly what the walk gives, and names it should not see (pruned, excluded, outside
    the globs, under a symlinked folder, gone, folders, ``..``) are left out."""
    write(ws, ".workos/context/.env", "SECRET=1\n")
    write(ws, ".workos/context/empty.md", "")
    write(ws, ".workos/context/drafts/wip.md")
    write(ws, ".workos/context/.git/HEAD.md")
    write(ws, ".workos/.kb/state.md")
    write(ws, "projects/prds/logo.png", b"\x89PNG")
    write(tmp_path / "elsewhere", "linked.md")
    (ws / ".workos/context/linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    exclude = ["**/drafts/**"]
    walked = discover(ws, DEFAULT_INCLUDE, exclude)
    names = [p.relative_to(ws).as_posix() for p in ws.rglob("*")]
    names += [".workos/context/linked/linked.md", ".workos/context/gone.md", "../outside.md", ""]
    named = discover_paths(ws.resolve(), DEFAULT_INCLUDE, exclude, 10_000_000, names)
    assert [c.path for c in named[0]] == [c.path for c in walked[0]]
    assert [(s.path, s.reason) for s in named[1]] == [(s.path, s.reason) for s in walked[1]]
    reasons = {s.path: s.reason for s in walked[1]}
    assert {".workos/context/.env", ".workos/context/empty.md", ".workos/context/linked"} <= set(reasons)


def test_source_type_of_follows_the_default_folders() -> None:
    assert [source_type_of(p) for p in DEFAULT_INCLUDE] == ["context", "prd", "resource"]
    assert source_type_of(".workos/context/a.md") == "context"
    assert source_type_of("projects/prds/x/b.md") == "prd"
    assert source_type_of(".workos/resources/12factor.net/index.md") == "resource"
    assert source_type_of("docs/c.md") == source_type_of(".workos/contextual.md") == "other"
