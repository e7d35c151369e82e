"""Finding and creating workspaces. A workspace is a folder that holds ``.workos/``.

kb looks for it in this order: an explicit path (``--workspace``), the ``KB_WORKSPACE`` environment variable,
then the current directory and its parents (as git finds a repository). All of kb's state lives in
``<workspace>/.workos/.kb/``, so two workspaces never share anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ingest.layout import CONFIG_NAME, PERSONAS_DIR, SCAFFOLD_DIRS, STATE_DIR, WORKOS_DIR
from kb.errors import WorkspaceNotFoundError


@dataclass(frozen=True)
class Workspace:
    """A workspace root and the paths kb uses inside it."""

    root: Path

    @property
    def workos(self) -> Path:
        return self.root / WORKOS_DIR

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def personas_dir(self) -> Path:
        return self.root / PERSONAS_DIR

    def ensure_state_dir(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ignore = self.state_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# kb's index: rebuilt by `kb index`, never committed\n*\n", encoding="utf-8")
        return self.state_dir


def _is_workspace(path: Path) -> bool:
    return (path / WORKOS_DIR).is_dir()


def find_workspace(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Workspace:
    """Locate the workspace: ``explicit``, else ``$KB_WORKSPACE``, else walk up from ``cwd``."""
    given_env = os.environ.get("KB_WORKSPACE") or None
    for given, origin in ((explicit, "--workspace"), (given_env, "KB_WORKSPACE")):
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
    """Scaffold a workspace at ``path``; returns it and the files/folders created (existing ones are kept).

    The kb.toml written lists every setting, commented out, with its description and default
    (:func:`kb.settings.toml_template`)."""
    from kb.settings import toml_template

    root = Path(path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise WorkspaceNotFoundError(f"{root} exists and is not a folder; choose another path for kb init.")
    created: list[str] = []
    for sub in SCAFFOLD_DIRS:
        folder = root / sub
        if not folder.exists():
            folder.mkdir(parents=True)
            created.append(sub + "/")
    toml = root / CONFIG_NAME
    if not toml.exists():
        toml.write_text(toml_template(), encoding="utf-8")
        created.append(CONFIG_NAME)
    return Workspace(root), created
