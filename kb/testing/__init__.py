"""Test doubles and the one test harness of kb's tests and benchmarks, shipped in the package (as httpx ships
its mock transport) so that both import the same copy: ``from kb.testing import FakeEmbedder, run_kb``.

kb never imports this module; it sits in the top layer, beside the CLI (docs/architecture.md), and imports
nothing heavy at module level (numpy, httpx and kb's backends are imported where they are used).

* processes: :func:`free_port`, :func:`kb_command` and :func:`run_kb` (``python -m kb`` in a child process),
  :class:`Background` (a child whose log can be read while it runs, e.g. :func:`kb_watch`), :func:`wait_for`;
  :func:`drop_privileges`, :func:`unprivileged_folder` and :func:`give_to_nobody` (a child that runs as the
  user nobody when we are root, so that file permissions apply to it);
* :class:`LlamaServer`: llama.cpp's OpenAI-compatible server with the bundled SmolLM2 on a free loopback port;
* :class:`WebMirror`: a static web server on 127.0.0.1 (ETag, Last-Modified, 304, folder listings);
* :func:`verify_citation`: is a cited quote really at the cited lines of the file;
* embedders: :class:`FakeEmbedder` (deterministic hashing vectors), :class:`CountingEmbedder` (records texts);
* workspaces: :func:`copy_workspace`, :func:`small_workspace`, :func:`watcher_thread`;
* services: :class:`ChromaServer` (``chroma run`` with its faults: stopped, killed, restarted, paused),
  :class:`EmbeddingServer` (``/v1/embeddings`` serving the bundled model's vectors), :func:`fake_kb` (a kb
  verb with the fake embedder in a child process).

The harness is split by what it stands up: ``processes`` (children, ports, polling, privileges),
``servers`` (llama.cpp and the web mirror), ``workspaces`` (workspaces, embedders, citations) and ``services``
(a Chroma server, an embeddings server). Import from ``kb.testing``.
"""

from __future__ import annotations

from kb.testing.processes import (
    NOBODY,
    READY,
    Background,
    drop_privileges,
    free_port,
    give_to_nobody,
    kb_command,
    kb_watch,
    run_kb,
    unprivileged_folder,
    wait_for,
)
from kb.testing.servers import (
    TYPES,
    LlamaServer,
    MirrorHandler,
    WebMirror,
    llama_server_missing,
)
from kb.testing.services import (
    HEARTBEAT,
    ChromaServer,
    EmbeddingServer,
    bundled_embed,
    chroma_binary,
    fake_kb,
    fake_kb_command,
)
from kb.testing.workspaces import (
    CountingEmbedder,
    FakeEmbedder,
    copy_workspace,
    small_workspace,
    verify_citation,
    watcher_thread,
)

__all__ = [
    "free_port",
    "wait_for",
    "kb_command",
    "run_kb",
    "Background",
    "kb_watch",
    "drop_privileges",
    "unprivileged_folder",
    "give_to_nobody",
    "READY",
    "NOBODY",
    "llama_server_missing",
    "LlamaServer",
    "MirrorHandler",
    "WebMirror",
    "TYPES",
    "verify_citation",
    "FakeEmbedder",
    "CountingEmbedder",
    "copy_workspace",
    "small_workspace",
    "watcher_thread",
    "HEARTBEAT",
    "ChromaServer",
    "EmbeddingServer",
    "bundled_embed",
    "chroma_binary",
    "fake_kb",
    "fake_kb_command",
]
