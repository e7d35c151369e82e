"""Model-based fuzz test of kb watch: random file operations against a real watcher process, then a barrier.

The model is the file tree itself: after the operations, the watched index must equal a from-scratch index
of the same tree (per source the same content hash and chunk texts; no stale source or chunk, none missing;
Chroma ids == manifest ids). The watcher runs in its own process (real watchdog, real Chroma, the fake
embedder) with the periodic reconcile switched off, so events alone must get it right (an inotify overflow's
rescan is allowed). Variants: plain; SIGSTOP during a burst then SIGCONT; SIGKILL mid-burst then a restart."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from test_watch import settle, start_fake_watch, view

from kb import KnowledgeBase
from kb.testing import FakeEmbedder

WORDS = (
    "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega billing ledger cursor page "
    "retention export owner queue retry budget latency"
).split()
DIRS = [".workos/context", "projects/prds", ".workos/resources"]
OUTSIDE = "outside"
OPS = 520


def text(rng: random.Random) -> str:
    out = [f"# {rng.choice(WORDS).title()} {rng.randrange(1000)}", ""]
    for _ in range(rng.randrange(1, 6)):
        if rng.random() < 0.4:
            out += [f"## {rng.choice(WORDS).title()}", ""]
        out += [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 40))) + ".", ""]
    return "\n".join(out)


class Tree:
    """Random operations on a workspace's indexed folders (and an outside folder for moves in and out)."""

    def __init__(self, ws: Path, rng: random.Random):
        self.ws, self.rng = ws, rng
        for d in [*DIRS, OUTSIDE]:
            (ws / d).mkdir(parents=True, exist_ok=True)

    def files(self, under: list[str] | None = None) -> list[Path]:
        out = []
        for d in under or DIRS:
            out += [p for p in (self.ws / d).rglob("*") if p.is_file()]
        return sorted(out)

    def folders(self) -> list[Path]:
        return sorted(p for d in DIRS for p in (self.ws / d).rglob("*") if p.is_dir())

    def new_path(self) -> Path:
        base = self.rng.choice([self.ws / d for d in DIRS] + self.folders())
        suffix = self.rng.choice([".md", ".md", ".md", ".txt", ".bin"])  # .bin: not indexed
        return base / f"f{self.rng.randrange(10**6)}{suffix}"

    def op(self) -> str:
        rng, files = self.rng, self.files()
        kind = rng.choice(
            [
                "create",
                "create",
                "modify",
                "append",
                "delete",
                "rename",
                "atomic",
                "touch",
                "same",
                "mkdir",
                "dir_rename",
                "dir_delete",
                "move_out",
                "move_in",
                "empty",
            ]
        )
        if not files and kind not in ("create", "mkdir", "move_in"):
            kind = "create"
        pick = rng.choice(files) if files else None
        try:
            if kind == "create":
                p = self.new_path()
                p.write_text(text(rng))
            elif kind == "modify":
                pick.write_text(text(rng))
            elif kind == "append":
                with open(pick, "a") as fh:
                    fh.write("\n" + text(rng))
            elif kind == "delete":
                pick.unlink()
            elif kind == "rename":
                os.rename(pick, self.new_path())
            elif kind == "atomic":  # an editor's save: write a temp file, rename it over the original
                tmp = pick.with_name(f".{pick.name}.swp")
                tmp.write_text(text(rng) if rng.random() < 0.7 else pick.read_text())
                os.replace(tmp, pick)
            elif kind == "touch":
                os.utime(pick)
            elif kind == "same":
                pick.write_bytes(pick.read_bytes())
            elif kind == "empty":
                pick.write_text("")
            elif kind == "mkdir":
                d = rng.choice([self.ws / x for x in DIRS] + self.folders()) / f"d{rng.randrange(10**6)}"
                d.mkdir()
                for _ in range(rng.randrange(0, 4)):
                    (d / f"f{rng.randrange(10**6)}.md").write_text(text(rng))
            elif kind == "dir_rename":
                folders = self.folders()
                if folders:
                    src = rng.choice(folders)
                    dest = rng.choice([self.ws / x for x in DIRS]) / f"r{rng.randrange(10**6)}"
                    if not str(dest).startswith(str(src) + "/"):
                        os.rename(src, dest)
            elif kind == "dir_delete":
                folders = self.folders()
                if folders:
                    shutil.rmtree(rng.choice(folders))
            elif kind == "move_out":
                os.rename(pick, self.ws / OUTSIDE / pick.name)
            elif kind == "move_in":
                outside = sorted((self.ws / OUTSIDE).iterdir())
                if outside:
                    os.rename(rng.choice(outside), self.new_path())
                else:
                    (self.ws / OUTSIDE / f"o{rng.randrange(10**6)}.md").write_text(text(rng))
        except FileNotFoundError:  # a folder renamed away under us: that is part of the game
            pass
        return kind

    def burst(self, n: int = 50) -> None:
        for _ in range(n):
            self.op()


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed,variant", [(11, "plain"), (22, "plain"), (33, "sigstop"), (44, "sigkill"), (55, "sigstop+sigkill")]
)
def test_watched_index_equals_a_from_scratch_index(tmp_path: Path, seed: int, variant: str) -> None:
    rng = random.Random(seed)
    ws = tmp_path / "ws"
    tree = Tree(ws, rng)
    for _ in range(30):
        tree.op()
    log = tmp_path / "watch.log"
    proc = start_fake_watch(ws, log)
    done = 0
    kinds: set[str] = set()
    try:
        while done < OPS:
            if rng.random() < 0.08:
                if "sigstop" in variant and done > OPS // 3 and "stopped" not in kinds:
                    proc.popen.send_signal(signal.SIGSTOP)
                    tree.burst(50)
                    proc.popen.send_signal(signal.SIGCONT)
                    kinds.add("stopped")
                elif "sigkill" in variant and done > 2 * OPS // 3 and "killed" not in kinds:
                    tree.burst(20)
                    # mid-burst: events pending, maybe a run in progress
                    proc.popen.send_signal(signal.SIGKILL)
                    proc.wait(30)
                    tree.burst(30)
                    proc = start_fake_watch(ws, log)
                    kinds.add("killed")
                else:
                    tree.burst(50)
                done += 50
                kinds.add("burst")
            else:
                kinds.add(tree.op())
                done += 1
                if rng.random() < 0.1:  # let runs interleave with the operations
                    time.sleep(rng.uniform(0.02, 0.3))
        if "sigstop" in variant:
            assert "stopped" in kinds
        if "sigkill" in variant:
            assert "killed" in kinds
        assert {"rename", "atomic", "dir_rename", "dir_delete", "move_in", "move_out", "burst"} <= kinds
        settle(ws, tmp_path / "scratch", timeout=120)
    finally:
        code = proc.stop(signal.SIGINT if seed % 2 == 0 else signal.SIGTERM)  # Ctrl-C or a service stop
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    # After a clean stop: Chroma holds exactly the manifest's chunks, and it still equals from scratch.
    sources, ids = view(ws)
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:  # the index's own model (the fingerprint)
        assert kb.engine.store.ids() == ids
    assert len(sources) > 5
