"""A workspace's layout: where its folders are, what is indexed by default, and the ``source_type`` of a path.

The one home of these names: kb (its workspace, settings, indexer, watcher and resources) and ingest
(discovery, resource copies) import them from here. Paths are relative to the workspace root, ``/``-separated.
"""

from __future__ import annotations

WORKOS_DIR = ".workos"  # a folder holding it is a workspace
STATE_DIRNAME = ".kb"  # kb's own state, inside WORKOS_DIR
STATE_DIR = f"{WORKOS_DIR}/{STATE_DIRNAME}"
CONFIG_NAME = "kb.toml"  # at the workspace root

CONTEXT_DIR = f"{WORKOS_DIR}/context"
PERSONAS_DIR = f"{WORKOS_DIR}/personas"
RESOURCES_DIR = f"{WORKOS_DIR}/resources"  # one folder per recommended resource: RESOURCES_DIR/<slug>/
PRDS_DIR = "projects/prds"

SCAFFOLD_DIRS = (CONTEXT_DIR, PERSONAS_DIR, PRDS_DIR)  # what ``kb init`` creates
# Indexed without any kb.toml (``include`` adds globs to these).
DEFAULT_INCLUDE = [f"{CONTEXT_DIR}/**", f"{PRDS_DIR}/**", f"{RESOURCES_DIR}/**"]

# Folders never descended into (kb's own state, VCS metadata, dependency trees).
PRUNED_DIRS = {STATE_DIRNAME, ".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv"}

# The folder a path is under -> its ``source_type`` (anything else: "other").
SOURCE_TYPES = {CONTEXT_DIR: "context", PRDS_DIR: "prd", RESOURCES_DIR: "resource"}

# A repository's front page, in the order it is looked for (a GitHub resource's first page).
README_NAMES = ("README.md", "readme.md", "README.rst", "README.txt", "README")
# Root files whose page is the resource itself (a citation of them links to the resource's URL).
ROOT_DOC_NAMES = frozenset({*(n.lower() for n in README_NAMES), "readme.markdown", "index.md", "index.html"})


def source_type_of(path: str) -> str:
    """``context``, ``prd``, ``resource`` or ``other``: what the folder ``path`` (workspace-relative) is under
    holds."""
    for folder, kind in SOURCE_TYPES.items():
        if path.startswith(folder + "/"):
            return kind
    return "other"
