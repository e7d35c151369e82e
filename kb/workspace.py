"""Finding and creating workspaces. A workspace is a folder that holds ``.workos/``.

kb looks for it in this order: an explicit path (``--workspace``), the ``KB_WORKSPACE`` environment variable,
then the current directory and its parents (as git finds a repository). All of kb's state lives in
``<workspace>/.workos/.kb/``, so two workspaces never share anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kb.errors import WorkspaceNotFoundError

STATE_DIRNAME = ".kb"

KB_TOML_TEMPLATE = """\
# kb.toml: settings of this kb workspace. Every key is optional; the values shown are the defaults.
# Precedence: command-line flags > KB_* environment variables > this file > defaults.

# Embedding model: 'st:<sentence-transformers model name or local path>'.
# Changing it rebuilds the index automatically (vectors of two models never mix).
# embedder = "st:all-MiniLM-L6-v2"

# 'onnx' runs the same weights without importing torch (fast start); 'torch' runs them with PyTorch.
# embedder_runtime = "onnx"

# Indexed by default: .workos/context/**, projects/prds/**, .workos/resources/**
# include = ["docs/**/*.md"]       # more globs, relative to the workspace
# exclude = ["**/drafts/**"]       # globs never indexed

# Files larger than this many megabytes are skipped (and reported).
# max_file_mb = 10

# Chunks never exceed this many model tokens (the model's window is 256).
# chunk_max_tokens = 256

# How many chunks an answer draws on, and the default persona of `kb ask`.
# top_k = 5
# persona = "backend-engineer"

# Below this cosine similarity to the question a sentence is not used as evidence.
# min_relevance = 0.35

# Retrieval: 'hybrid' (BM25 + dense vectors), 'dense' or 'bm25'; an optional cross-encoder second stage.
# search_mode = "hybrid"
# reranker = "cross-encoder:/path/to/a/local/cross-encoder"

# Answers written by a language model (every sentence is then checked against the source it cites):
# llm = "extractive"                        # or "openai-compatible", "llama-cpp:/path/model.gguf"
# llm_base_url = "http://127.0.0.1:8080/v1" # Ollama, llama.cpp's server, vLLM, LM Studio, a hosted API
# llm_model = "..."                         # the key: KB_LLM_API_KEY (keep it out of this file)

# The personas' recommended resources (kb resources list|fetch|import):
# [resources]
# add = ["https://example.org/handbook"]    # more URLs; drop = [...] leaves a persona's out
# mirror = { "https://12factor.net/" = "/srv/mirrors/12factor" }   # air-gapped copies
# allow_hosts = ["wiki.intranet.example"]   # private addresses are refused unless listed here
# max_age_hours = 168
"""


@dataclass(frozen=True)
class Workspace:
    """A workspace root and the paths kb uses inside it."""

    root: Path

    @property
    def workos(self) -> Path:
        return self.root / ".workos"

    @property
    def state_dir(self) -> Path:
        return self.workos / STATE_DIRNAME

    @property
    def config_path(self) -> Path:
        return self.root / "kb.toml"

    @property
    def personas_dir(self) -> Path:
        return self.workos / "personas"

    def ensure_state_dir(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ignore = self.state_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# kb's index: rebuilt by `kb index`, never committed\n*\n", encoding="utf-8")
        return self.state_dir


def _is_workspace(path: Path) -> bool:
    return (path / ".workos").is_dir()


def find_workspace(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Workspace:
    """Locate the workspace: ``explicit``, else ``$KB_WORKSPACE``, else walk up from ``cwd``."""
    for given, origin in ((explicit, "--workspace"), (os.environ.get("KB_WORKSPACE") or None, "KB_WORKSPACE")):
        if given:
            path = Path(given).expanduser().resolve()
            if not path.is_dir():
                raise WorkspaceNotFoundError(f"{origin} points to {path}, which is not a folder.")
            if not _is_workspace(path):
                raise WorkspaceNotFoundError(
                    f"{path} ({origin}) is not a kb workspace: it has no .workos/ folder. "
                    f"Create one with: kb init {path}"
                )
            return Workspace(path)
    start = (cwd or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if _is_workspace(candidate):
            return Workspace(candidate)
    raise WorkspaceNotFoundError(
        f"No kb workspace found in {start} or its parents (a workspace is a folder holding .workos/). "
        "Create one with: kb init PATH, or point at one with --workspace PATH or KB_WORKSPACE."
    )


def init_workspace(path: str | os.PathLike[str]) -> tuple[Workspace, list[str]]:
    """Scaffold a workspace at ``path``; returns it and the files/folders created (existing ones are kept)."""
    root = Path(path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise WorkspaceNotFoundError(f"{root} exists and is not a folder; choose another path for kb init.")
    created: list[str] = []
    for sub in (".workos/context", ".workos/personas", "projects/prds"):
        folder = root / sub
        if not folder.exists():
            folder.mkdir(parents=True)
            created.append(sub + "/")
    toml = root / "kb.toml"
    if not toml.exists():
        toml.write_text(KB_TOML_TEMPLATE, encoding="utf-8")
        created.append("kb.toml")
    return Workspace(root), created
