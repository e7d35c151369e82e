"""The README's promises: its Python example runs, its first commands are the real ones, and every command
and sub-command of the CLI (read from the app itself, so a new one is covered at once) has help with an
example and a row in the README's Commands section."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from kb.cli import app
from kb.testing import copy_workspace

ROOT = Path(__file__).resolve().parents[1]

README = (ROOT / "README.md").read_text()
COMMANDS_SECTION = README.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]


def command_paths(group: object, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], bool]]:
    """(path, is_group) of every command and sub-command under ``group``: (("resources", "list"), False)."""
    for name, command in getattr(group, "commands", {}).items():
        is_group = hasattr(command, "commands")
        yield (*prefix, name), is_group
        if is_group:
            yield from command_paths(command, (*prefix, name))


COMMANDS = {" ".join(path): is_group for path, is_group in command_paths(get_command(app))}


def test_readme_python_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code, "README has a python example"
    copy_workspace(ROOT / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "chunks indexed" in out and "projects/prds/notifications.md" in out and "7 sources" in out


def test_readme_opens_with_the_two_commands() -> None:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block and README.index("```bash") < 200
    first, second = block.group(1).strip().splitlines()
    assert "scripts/setup.sh" in first and "kb index" in first and "kb ask" in first
    assert "pytest" in second
    ci = (ROOT / ".ci/run").read_text()
    assert "scripts/setup.sh" in ci and "pytest" in ci
    same = ("--with-llm" in second) == ("--with-llm" in ci)
    assert same, "CI installs what the README's test command installs"


def test_the_command_list_comes_from_the_app() -> None:
    top = {"init", "index", "search", "ask", "eval", "status", "watch", "personas", "config", "resources"}
    assert top <= set(COMMANDS)
    assert {"resources list", "resources fetch", "resources import"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_an_example_and_a_readme_row(command: str) -> None:
    r = CliRunner().invoke(app, [*command.split(), "--help"])
    assert r.exit_code == 0, r.output
    if COMMANDS[command]:  # a group (kb resources): examples of its sub-commands
        assert re.search(r"^\s*Examples:\s*$", r.output, re.M) and f"kb {command} " in r.output
    else:
        assert re.search(rf"^\s*Example: kb {re.escape(command)}\b", r.output, re.M), r.output
        if command != "init":
            assert "--workspace" in r.output
    assert f"`kb {command}" in COMMANDS_SECTION, f"README's Commands section documents kb {command}"
