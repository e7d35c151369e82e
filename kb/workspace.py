"""Finding and creating workspaces. A workspace is a folder that holds ``.workos/``.

kb looks for it in this order: an explicit path (``--workspace``), the ``KB_WORKSPACE`` environment variable,
then the current directory and its parents (as git finds a repository). All of kb's state lives in
``<workspace>/.workos/.kb/``, so two workspaces never share anything.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ingest.layout import CONFIG_NAME, PERSONAS_DIR, SCAFFOLD_DIRS, STATE_DIR, WORKOS_DIR
from kb.errors import WorkspaceNotFoundError

log = logging.getLogger(__name__)

ID_FILE = "workspace-id"


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

    def workspace_id(self) -> str:
        """This workspace's stable id (16 hex digits), created once in ``.workos/.kb/workspace-id``.

        A shared Chroma server names this workspace's collections after it, so moving the folder keeps its
        index. The file also records the folder it was made for: when it turns up in another folder while
        the original still holds the same id, this is a *copy*, and the copy gets an id of its own (two
        workspaces must never write into one collection)."""
        path = self.state_dir / ID_FILE
        wsid, recorded = _read_id(path)
        here = str(self.root)
        if wsid and recorded != here:
            if recorded and _read_id(Path(recorded) / STATE_DIR / ID_FILE)[0] == wsid:
                log.info("%s is a copy of the workspace %s: it gets an id of its own", here, recorded)
                wsid = None
        if wsid is not None and recorded == here:
            return wsid
        self.ensure_state_dir()
        tmp = path.with_name(f"{ID_FILE}.{os.getpid()}.tmp")
        tmp.write_text(f"{wsid or secrets.token_hex(8)}\n{here}\n", encoding="utf-8")
        if not path.exists():  # a new id: the first process to write it wins
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            tmp.unlink()
        else:
            os.replace(tmp, path)
        found = _read_id(path)[0]
        if found is None:  # pragma: no cover - the file was replaced by something unreadable meanwhile
            raise WorkspaceNotFoundError(f"Cannot read {path}: delete it and run kb index again.")
        return found


def _read_id(path: Path) -> tuple[str | None, str | None]:
    """(id, folder it was made for) from a workspace-id file; (None, None) when absent or unreadable."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, None
    wsid = lines[0].strip() if lines else ""
    if len(wsid) != 16 or any(c not in "0123456789abcdef" for c in wsid):
        return None, None
    return wsid, (lines[1].strip() if len(lines) > 1 else None)


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
