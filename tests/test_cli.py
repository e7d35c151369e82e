"""The kb command line, through real subprocesses: JSON shapes, exit codes, help with examples."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import kb.cli.commands as commands_module
import kb.workspace as workspace_module
from kb import errors
from kb.cli import app
from kb.cli.group import KbGroup
from kb.models import Answer, OnToken
from kb.prompts import DRAFT_HEADER, PERSONA_PICKED
from kb.testing import run_kb

runner = CliRunner()


def test_index_json_shape_and_idempotence(workspace: Path) -> None:
    first = run_kb("index", "--workspace", str(workspace), "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    keys = {"added", "updated", "removed", "renamed", "unchanged", "skipped", "chunks_embedded", "seconds"}
    assert keys <= set(data)
    assert data["added"] == 7 and data["chunks_embedded"] > 0 and data["skipped"] == []
    again = json.loads(run_kb("index", "--workspace", str(workspace), "--json").stdout)
    assert again["chunks_embedded"] == 0 and again["unchanged"] == 7


def test_search_ask_status_json(indexed: Path) -> None:
    s = run_kb("search", "notification retention", "-k", "3", "--json", "--workspace", str(indexed))
    assert s.returncode == 0, s.stderr
    data = json.loads(s.stdout)
    assert data["query"] == "notification retention" and len(data["hits"]) == 3
    hit = data["hits"][0]
    assert set(hit) >= {"rank", "score", "path", "start_line", "end_line", "heading", "text", "source_type"}
    assert "\\" not in hit["path"] and not hit["path"].startswith("/")

    question = "How should we paginate the notifications API?"
    a = run_kb("ask", question, "--persona", "backend-engineer", "--json", "--workspace", str(indexed))
    assert a.returncode == 0, a.stderr
    ans = json.loads(a.stdout)
    assert set(ans) >= {"question", "persona", "answer", "abstained", "citations"}
    assert ans["persona"] == "backend-engineer" and ans["abstained"] is False
    assert set(ans["citations"][0]) >= {"id", "path", "start_line", "end_line", "heading", "quote", "score"}

    st = json.loads(run_kb("status", "--json", "--workspace", str(indexed)).stdout)
    assert st["sources_count"] == 7 and len(st["sources"]) == 7
    assert set(st["sources"][0]) >= {"path", "content_hash", "chunks", "indexed_at"}


def test_abstain_exit_code_and_text(indexed: Path) -> None:
    r = run_kb("ask", "What is the capital of Mongolia?", "--workspace", str(indexed))
    assert r.returncode == 3
    assert "found nothing in the knowledge base" in r.stdout and "nearest sources" in r.stdout
    j = run_kb("ask", "What is the capital of Mongolia?", "--json", "--workspace", str(indexed))
    assert j.returncode == 3 and json.loads(j.stdout)["abstained"] is True


def test_human_answer_shows_location_and_quote(indexed: Path) -> None:
    r = run_kb("ask", "Which team is on call?", "--workspace", str(indexed))
    assert r.returncode == 0, r.stderr
    assert "Sources" in r.stdout and ".workos/context/team-directory.md:" in r.stdout and " › " in r.stdout


def test_workspace_found_from_env_and_parents(indexed: Path, tmp_path: Path) -> None:
    sub = indexed / "projects" / "prds"
    r = run_kb("status", "--json", cwd=sub)
    assert r.returncode == 0 and json.loads(r.stdout)["workspace"] == str(indexed.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_kb("status", "--json", cwd=elsewhere, env={"KB_WORKSPACE": str(indexed)})
    assert r.returncode == 0 and json.loads(r.stdout)["workspace"] == str(indexed.resolve())


def test_no_workspace_is_a_clear_error(tmp_path: Path) -> None:
    r = run_kb("search", "x", cwd=tmp_path)
    assert r.returncode == 1
    assert "No kb workspace found" in r.stderr and "kb init" in r.stderr and "Traceback" not in r.stderr


def test_search_before_index_says_what_to_do(workspace: Path) -> None:
    r = run_kb("search", "x", "--workspace", str(workspace))
    assert r.returncode == 1 and "kb index" in r.stderr and "Traceback" not in r.stderr


def test_bad_kb_toml_is_reported(workspace: Path) -> None:
    (workspace / "kb.toml").write_text("top_kk = 3\n")
    r = run_kb("config", "--workspace", str(workspace))
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


def test_cli_does_not_import_heavy_libraries() -> None:
    heavy = ("torch", "chromadb", "sentence_transformers", "llama_index", "kb.api")
    code = f"import sys, kb.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]"


def test_a_command_answered_by_kb_watch_does_not_import_the_index_stack(tmp_path: Path) -> None:
    code = (
        "import sys, kb.serve.client as client\n"
        "class Watcher:\n    streams_tokens = False\n    def search(self, *a, **k): return []\n"
        "client.connect = lambda workspace: Watcher()\n"
        "from kb.cli import app\n"
        "try:\n    app(['search', 'x', '--json'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('kb.api', 'kb.index', 'numpy', 'chromadb') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.endswith("[]\n") and '"hits": []' in r.stdout, r.stdout + r.stderr


def test_ask_does_not_import_torch(indexed: Path) -> None:
    code = (
        "import sys; from kb import KnowledgeBase; kb = KnowledgeBase.open(sys.argv[1]); "
        "kb.ask('How should we paginate the notifications API?'); print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(indexed)], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


NOWHERE = ["--workspace", "/nonexistent"]


@pytest.mark.parametrize(
    "args",
    [
        ["index"],
        ["search", "x"],
        ["ask", "q"],
        ["status"],
        ["personas"],
        ["config"],
        ["resources", "list"],
        ["resources", "fetch"],
        ["resources", "import", "dir", "--url", "https://example.org/"],
    ],
)
def test_every_command_reports_a_kb_error_as_one_line(args: list[str]) -> None:
    r = runner.invoke(app, [*args, *NOWHERE])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == "error: --workspace points to /nonexistent, which is not a folder.\n"


def test_a_sub_command_error_is_the_same_in_a_real_process() -> None:
    r = run_kb("resources", "list", *NOWHERE)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == "error: --workspace points to /nonexistent, which is not a folder.\n"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.KbError("it [failed]"), 1),
        (errors.IndexLockedError("it [failed]"), 4),
        (errors.BadRequest("it [failed]"), 2),
    ],
)
def test_the_error_class_decides_the_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: errors.KbError, code: int
) -> None:
    def fail(path: str) -> None:
        raise error

    monkeypatch.setattr(workspace_module, "init_workspace", fail)
    r = runner.invoke(app, ["init", str(tmp_path)])
    assert r.exit_code == code and r.stderr == "error: it [failed]\n"  # the message is not read as markup


def test_ctrl_c_in_a_command_says_interrupted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupt(path: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(workspace_module, "init_workspace", interrupt)
    r = runner.invoke(app, ["init", str(tmp_path)])
    assert r.exit_code == 130 and r.stderr == "interrupted\n"


CLI_DIR = Path(__file__).resolve().parents[1] / "kb" / "cli"


def groups(command: object) -> Iterator[object]:
    """The app's group and every sub-app's group (``kb resources``), recursively."""
    subs = getattr(command, "commands", None)
    if subs is not None:
        yield command
        for sub in subs.values():
            yield from groups(sub)


def test_errors_are_handled_in_one_place() -> None:
    assert len(list(groups(get_command(app)))) >= 2
    assert all(isinstance(g, KbGroup) for g in groups(get_command(app)))
    handlers = {
        path.name
        for path in CLI_DIR.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ExceptHandler) and "KbError" in ast.unparse(node.type or ast.Name("?"))
    }
    assert handlers == {"group.py"}


class DraftingService:
    """A stand-in for :class:`kb.service.Service` whose model streams a draft (with a link), then abstains."""

    def __init__(self, streams_tokens: bool):
        self.streams_tokens = streams_tokens

    def ask(self, question: str, *, on_token: OnToken | None = None, **options: object) -> Answer:
        if on_token is not None:
            for piece in ("Use cursor ", "pagination, see https://evil.example/x now. "):
                on_token(piece)
        return Answer(
            question=question,
            persona="backend-engineer",
            answer="No answer here.",
            abstained=True,
            persona_title="Backend Engineer",
            persona_picked=True,
        )


@pytest.mark.parametrize(("streams", "json_out"), [(True, False), (True, True), (False, False)])
def test_ask_streams_a_safe_draft_only_when_the_service_can(
    monkeypatch: pytest.MonkeyPatch, streams: bool, json_out: bool
) -> None:
    monkeypatch.setattr(commands_module, "serving", lambda workspace, server=None: DraftingService(streams))
    r = runner.invoke(app, ["ask", "How do we paginate?", *(["--json"] if json_out else [])])
    assert r.exit_code == 3
    picked = PERSONA_PICKED.format(title="Backend Engineer") + "\n"
    if json_out:
        assert r.stderr == "" and json.loads(r.stdout)["abstained"] is True
    elif streams:
        draft = "Use cursor pagination, see [link removed] now. "
        assert r.stderr == f"{DRAFT_HEADER}\n{draft}\n\n{picked}" and r.stdout == "No answer here.\n"
    else:  # across kb watch's socket: no draft, the same answer
        assert r.stderr == picked and r.stdout == "No answer here.\n"
