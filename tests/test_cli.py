"""The kb command line, through real subprocesses: JSON shapes, exit codes, help with examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb.cli import app

runner = CliRunner()


def kb(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kb", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_index_json_shape_and_idempotence(workspace: Path) -> None:
    first = kb("index", "--workspace", str(workspace), "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert {"added", "updated", "removed", "renamed", "unchanged", "skipped", "chunks_embedded", "seconds"} <= set(data)
    assert data["added"] == 7 and data["chunks_embedded"] > 0 and data["skipped"] == []
    again = json.loads(kb("index", "--workspace", str(workspace), "--json").stdout)
    assert again["chunks_embedded"] == 0 and again["unchanged"] == 7


def test_search_ask_status_json(indexed: Path) -> None:
    s = kb("search", "notification retention", "-k", "3", "--json", "--workspace", str(indexed))
    assert s.returncode == 0, s.stderr
    data = json.loads(s.stdout)
    assert data["query"] == "notification retention" and len(data["hits"]) == 3
    hit = data["hits"][0]
    assert set(hit) >= {"rank", "score", "path", "start_line", "end_line", "heading", "text", "source_type"}
    assert "\\" not in hit["path"] and not hit["path"].startswith("/")

    a = kb("ask", "How should we paginate the notifications API?", "--persona", "backend-engineer", "--json",
           "--workspace", str(indexed))
    assert a.returncode == 0, a.stderr
    ans = json.loads(a.stdout)
    assert set(ans) >= {"question", "persona", "answer", "abstained", "citations"}
    assert ans["persona"] == "backend-engineer" and ans["abstained"] is False
    assert set(ans["citations"][0]) >= {"id", "path", "start_line", "end_line", "heading", "quote", "score"}

    st = json.loads(kb("status", "--json", "--workspace", str(indexed)).stdout)
    assert st["sources_count"] == 7 and len(st["sources"]) == 7
    assert set(st["sources"][0]) >= {"path", "content_hash", "chunks", "indexed_at"}


def test_abstain_exit_code_and_text(indexed: Path) -> None:
    r = kb("ask", "What is the capital of Mongolia?", "--workspace", str(indexed))
    assert r.returncode == 3
    assert "found nothing in the knowledge base" in r.stdout and "nearest sources" in r.stdout
    j = kb("ask", "What is the capital of Mongolia?", "--json", "--workspace", str(indexed))
    assert j.returncode == 3 and json.loads(j.stdout)["abstained"] is True


def test_human_answer_shows_location_and_quote(indexed: Path) -> None:
    r = kb("ask", "Which team is on call?", "--workspace", str(indexed))
    assert r.returncode == 0, r.stderr
    assert "Sources" in r.stdout and ".workos/context/team-directory.md:" in r.stdout and " › " in r.stdout


def test_workspace_found_from_env_and_parents(indexed: Path, tmp_path: Path) -> None:
    sub = indexed / "projects" / "prds"
    r = kb("status", "--json", cwd=sub)
    assert r.returncode == 0 and json.loads(r.stdout)["workspace"] == str(indexed.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = kb("status", "--json", cwd=elsewhere, env={"KB_WORKSPACE": str(indexed)})
    assert r.returncode == 0 and json.loads(r.stdout)["workspace"] == str(indexed.resolve())


def test_no_workspace_is_a_clear_error(tmp_path: Path) -> None:
    r = kb("search", "x", cwd=tmp_path)
    assert r.returncode == 1
    assert "No kb workspace found" in r.stderr and "kb init" in r.stderr and "Traceback" not in r.stderr


def test_search_before_index_says_what_to_do(workspace: Path) -> None:
    r = kb("search", "x", "--workspace", str(workspace))
    assert r.returncode == 1 and "kb index" in r.stderr and "Traceback" not in r.stderr


def test_bad_kb_toml_is_reported(workspace: Path) -> None:
    (workspace / "kb.toml").write_text("top_kk = 3\n")
    r = kb("config", "--workspace", str(workspace))
    assert r.returncode == 1 and "top_kk" in r.stderr


def test_init_scaffolds_a_workspace(tmp_path: Path) -> None:
    r = runner.invoke(app, ["init", str(tmp_path / "acme"), "--json"])
    assert r.exit_code == 0, r.output
    created = json.loads(r.output)["created"]
    assert "kb.toml" in created and (tmp_path / "acme/.workos/context").is_dir()
    assert (tmp_path / "acme/projects/prds").is_dir()
    from kb.settings import read_toml

    assert read_toml(tmp_path / "acme/kb.toml") == {}, "the template is all comments: defaults apply"
    r = runner.invoke(app, ["config", "--workspace", str(tmp_path / "acme"), "--json"])
    assert json.loads(r.output)["settings"]["top_k"] == 5


def test_personas_json(workspace: Path) -> None:
    r = runner.invoke(app, ["personas", "--json", "--workspace", str(workspace)])
    names = {p["name"]: p["origin"] for p in json.loads(r.output)["personas"]}
    assert names["backend-engineer"] == "bundled" and len(names) >= 5


@pytest.mark.parametrize("command", ["init", "index", "search", "ask", "status", "personas", "config"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    r = runner.invoke(app, [command, "--help"])
    assert r.exit_code == 0 and "Example" in r.output
    if command != "init":
        assert "--workspace" in r.output
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"kb {command}" in readme, f"README documents kb {command}"


def test_cli_does_not_import_heavy_libraries() -> None:
    code = "import sys, kb.cli; print(sorted(m for m in ('torch','chromadb','sentence_transformers','llama_index') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]"


def test_ask_does_not_import_torch(indexed: Path) -> None:
    code = ("import sys; from kb import KnowledgeBase; kb = KnowledgeBase.open(sys.argv[1]); "
            "kb.ask('How should we paginate the notifications API?'); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(indexed)], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr
