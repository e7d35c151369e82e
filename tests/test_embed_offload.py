"""``embedder = "openai-compatible:<model>"``: embeddings from a /v1/embeddings server, tested against a real
HTTP server on loopback serving the bundled model's vectors (:class:`kb.testing.services.EmbeddingServer`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kb import KnowledgeBase
from kb.errors import EmbedderError
from kb.settings import DEFAULT_EMBEDDER, load_settings
from kb.testing import copy_workspace, run_kb, small_workspace
from kb.testing.services import EmbeddingServer
from kb.workspace import find_workspace

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "How should we paginate the notifications API?",
    "Who owns the notifications service?",
    "What is the data retention policy for usage exports?",
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingServer]:
    cache = tmp_path_factory.mktemp("served-model")
    with EmbeddingServer("minilm", model_cache=cache) as srv:
        yield srv


@pytest.fixture
def remote(served: EmbeddingServer, monkeypatch: pytest.MonkeyPatch) -> EmbeddingServer:
    served.failures, served.delay, served.api_key, served.model = [], 0.0, None, "minilm"
    monkeypatch.setenv("KB_EMBEDDER", "openai-compatible:minilm")
    monkeypatch.setenv("KB_EMBED_BASE_URL", served.base_url)
    return served


def test_remote_embeddings_give_the_local_models_results(
    remote: EmbeddingServer, indexed: Path, tmp_path: Path
) -> None:
    ws = copy_workspace(ROOT / "data", tmp_path / "remote")
    before = remote.requests
    with KnowledgeBase.open(ws, embed_batch=16) as kb:
        report = kb.index()
        assert report.chunks_embedded == report.chunks_total > 50
        assert max(remote.batches[-5:]) <= 16, "batched as configured"
        assert remote.requests - before <= report.chunks_total // 16 + 3
        assert kb.embedder.model_id == f"openai-compatible:minilm@{remote.base_url}#384"
        remote_hits = {q: [(h.path, h.start_line) for h in kb.search(q, k=5)] for q in QUESTIONS}
        again = kb.index()
        assert again.chunks_embedded == 0
    local_ws = find_workspace(indexed)  # indexed with the bundled model, in process
    with KnowledgeBase(local_ws, load_settings(local_ws.config_path, embedder=DEFAULT_EMBEDDER)) as local:
        for q in QUESTIONS:
            assert [(h.path, h.start_line) for h in local.search(q, k=5)] == remote_hits[q], q


def test_transient_errors_are_retried_and_others_are_one_line(
    remote: EmbeddingServer, tmp_path: Path
) -> None:
    ws = small_workspace(tmp_path)
    remote.failures = [429, 503, 500]
    with KnowledgeBase.open(ws, embed_retries=4) as kb:
        assert kb.index().chunks_embedded > 0
    assert remote.failures == []
    remote.failures = [503] * 3
    with KnowledgeBase.open(ws, embed_retries=1) as kb, pytest.raises(EmbedderError, match="failed 2 times"):
        kb.embedder.embed(["x"])
    remote.failures = []
    remote.api_key = "right-key"
    env = {"KB_EMBEDDER": "openai-compatible:minilm", "KB_EMBED_BASE_URL": remote.base_url}
    done = run_kb("index", "--workspace", ws, env={**env, "KB_EMBED_API_KEY": "wrong-key"})
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "refused the API key (HTTP 401)" in done.stderr and "wrong-key" not in done.stderr
    done = run_kb(
        "index",
        "--workspace",
        ws,
        env={**env, "KB_EMBED_API_KEY": "right-key", "KB_EMBEDDER": "openai-compatible:nope"},
    )
    assert done.returncode == 1 and "model 'nope'" in done.stderr and "HTTP 404" in done.stderr, done.stderr
    remote.delay = 1.5
    with KnowledgeBase.open(ws, embed_timeout=0.3, embed_retries=0, embed_api_key="right-key") as kb:
        with pytest.raises(EmbedderError, match="no answer within 0.3 s"):
            kb.embedder.embed(["slow"])


def test_switching_the_model_rebuilds(
    remote: EmbeddingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = small_workspace(tmp_path)
    with KnowledgeBase.open(ws) as kb:
        first = kb.index()
    remote.model = "minilm-v2"  # the same server now serves another model name
    monkeypatch.setenv("KB_EMBEDDER", "openai-compatible:minilm-v2")
    with KnowledgeBase.open(ws) as kb:
        report = kb.index()
        assert report.rebuilt and report.chunks_embedded == first.chunks_total
        assert kb.engine.store.ids() == kb.engine.manifest().all_chunk_ids()


def test_a_server_that_changes_its_model_is_caught_by_the_probe(
    remote: EmbeddingServer, tmp_path: Path
) -> None:
    ws = small_workspace(tmp_path)
    with KnowledgeBase.open(ws) as kb:
        total = kb.index().chunks_total
        assert kb.search("Who owns billing?", k=1)[0].path == ".workos/context/team.md"
    original = remote.embed
    remote.embed = lambda texts: np.ascontiguousarray(original(texts)[:, ::-1])  # same size, other vectors
    try:
        with KnowledgeBase.open(ws) as kb, pytest.raises(EmbedderError, match="changed its model"):
            kb.search("Who owns billing?", k=1)
        env = {"KB_EMBEDDER": "openai-compatible:minilm", "KB_EMBED_BASE_URL": remote.base_url}
        done = run_kb("index", "--workspace", ws, env=env)
        assert done.returncode == 1 and "kb index --rebuild" in done.stderr, done.stderr
        done = run_kb("index", "--rebuild", "--json", "--workspace", ws, env=env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["chunks_embedded"] == report["chunks_total"] == total, "every vector re-embedded"
        with KnowledgeBase.open(ws) as kb:
            assert kb.search("Who owns billing?", k=1)[0].path == ".workos/context/team.md"
            assert kb.engine.store.ids() == kb.engine.manifest().all_chunk_ids()
    finally:
        remote.embed = original
