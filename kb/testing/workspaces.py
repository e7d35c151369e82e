"""Workspaces, embedders and citations for tests: deterministic fake embedders, small workspaces, a
watcher in a thread, and a check that a cited quote is really at the cited lines."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb.testing.processes import wait_for

if TYPE_CHECKING:
    import numpy as np

    from kb.backends.embedders import Embedder
    from kb.serve.watcher import Reindexed, Watcher


# --- citations and embedders --------------------------------------------------------------------------------
def verify_citation(root: Path, path: str, start: int, end: int, quote: str) -> bool:
    """True when ``quote`` really is at lines ``start``-``end`` of ``root / path`` (whitespace-normalised)."""
    lines = re.split(r"\r\n|\n|\r", (root / path).read_text(encoding="utf-8"))
    window = " ".join(" ".join(lines[start - 1 : end]).split())
    return " ".join(quote.split()) in window


class FakeEmbedder:
    """Deterministic bag-of-words hashing vectors (for tests that claim nothing about quality); records every
    text it embeds in :attr:`calls`."""

    model_id = "fake-hash-embedder@1"
    dimensions = 64
    max_tokens = 256

    def __init__(self) -> None:
        self.calls: list[str] = []

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        self.calls.extend(texts)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimensions] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.clip(norms, 1e-9, None)  # type: ignore[no-any-return]


class CountingEmbedder:
    """Wraps an embedder and records every text sent to it in :attr:`calls`."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_id, self.dimensions, self.max_tokens = inner.model_id, inner.dimensions, inner.max_tokens
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.extend(texts)
        return self.inner.embed(texts)


# --- workspaces ---------------------------------------------------------------------------------------------
def copy_workspace(source: Path, dest: Path, *, symlinks: bool = False) -> Path:
    """A copy of the workspace ``source`` at ``dest``, without its index (``.kb``)."""
    shutil.copytree(source, dest, symlinks=symlinks, ignore=shutil.ignore_patterns(".kb"))
    return dest


def small_workspace(parent: Path) -> Path:
    """``parent/small``: four PRDs, a context file and an ``outside`` folder that is not indexed."""
    ws = parent / "small"
    for sub in (".workos/context", "projects/prds", "outside"):
        (ws / sub).mkdir(parents=True)
    for i in range(4):
        (ws / f"projects/prds/doc{i}.md").write_text(
            f"# Doc {i}\n\nAlpha beta gamma {i}.\n\n## Part\n\nDelta {i}.\n"
        )
    (ws / ".workos/context/team.md").write_text("# Team\n\nAda owns billing.\n")
    return ws


@contextlib.contextmanager
def watcher_thread(ws: Path, **options: Any) -> Iterator[tuple[Watcher, FakeEmbedder, list[Reindexed]]]:
    """A :class:`kb.serve.watcher.Watcher` on a thread (real watchdog, real Chroma, :class:`FakeEmbedder`),
    ready; on exit stopped and checked: it failed nowhere, and Chroma holds exactly the manifest's chunks."""
    from kb.api import KnowledgeBase
    from kb.serve.watcher import Watcher

    emb = FakeEmbedder()
    kb = KnowledgeBase.open(ws, embedder=emb)
    events: list[Reindexed] = []
    options.setdefault("reconcile_every", 3600.0)
    w = Watcher(kb.engine, kb.query, on_reindex=events.append, **options)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            w.run(stop)
        except BaseException as exc:  # surfaced to the caller
            failure.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: w.ready.is_set() or failure, 60)
    assert not failure, failure
    try:
        yield w, emb, events
    finally:
        stop.set()
        t.join(30)
        assert not t.is_alive() and not failure, failure
        assert kb.engine.store.ids() == kb.engine.manifest().all_chunk_ids()
        kb.close()
