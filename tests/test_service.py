"""The service interface (kb.service.Service): the library and the socket client are one interface.

Every kb error class crosses the socket as itself, with its exit code, and one CLI verb costs exactly one
request to the owner of the index (no hidden round trips, e.g. for settings).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kb.errors as errors
from kb.api import KnowledgeBase
from kb.models import Answer, Hit, IndexReport, Status
from kb.serve.client import Remote, connect, encode, socket_path
from kb.serve.server import WatchServer
from kb.service import Service
from kb.workspace import find_workspace

ERROR_CLASSES = [
    cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.KbError)
]

HIT = Hit(
    rank=1, score=0.5, path="a.md", start_line=1, end_line=2, heading="A", text="alpha", source_type="other"
)
ANSWER = Answer(question="q", persona=None, answer="- alpha [1]", abstained=False, citations=[])
STATUS = Status("ws", "ws/.workos/.kb", "m", "onnx", "fp", 1, 1, None, [], None)


class Owner:
    """A stand-in for the process that owns the index: answers each verb, or raises the named error class, and
    counts requests."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        self.calls.append((method, params))
        raise_as = params.get("query") or params.get("question")
        if isinstance(raise_as, str) and raise_as.startswith("raise:"):
            raise getattr(errors, raise_as.removeprefix("raise:"))(f"{raise_as} happened")
        return {
            "search": lambda: encode([HIT]),
            "ask": lambda: encode(ANSWER),
            "status": lambda: encode(STATUS),
            "index": lambda: encode(IndexReport()),
        }.get(method, lambda: {"pid": 0})()


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[tuple[Path, Owner]]:
    ws = tmp_path / "ws"
    (ws / ".workos").mkdir(parents=True)
    dispatch = Owner()
    server = WatchServer(socket_path(find_workspace(ws).state_dir), dispatch)
    server.start()
    try:
        yield ws, dispatch
    finally:
        server.stop()


def test_both_implementations_satisfy_the_protocol() -> None:
    """The protocol's verbs have the same parameters in the library and in the socket client."""
    for verb in ("index", "search", "ask", "status", "close"):
        expected = inspect.signature(getattr(Service, verb)).parameters
        for impl in (KnowledgeBase, Remote):
            got = inspect.signature(getattr(impl, verb)).parameters
            assert list(got) == list(expected), (impl.__name__, verb)
    assert KnowledgeBase.streams_tokens is True and Remote.streams_tokens is False


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_crosses_the_socket_as_itself(owner: tuple[Path, Owner], cls: type) -> None:
    ws, _ = owner
    remote = connect(ws)
    assert remote is not None
    with remote, pytest.raises(errors.KbError) as caught:
        remote.search(f"raise:{cls.__name__}")
    assert type(caught.value) is cls
    assert caught.value.exit_code == cls.exit_code
    assert str(caught.value) == f"raise:{cls.__name__} happened"


def test_the_error_list_is_complete() -> None:
    """Every KbError subclass defined anywhere in kb lives in kb.errors (so it can cross the socket)."""
    import importlib
    import pkgutil

    import kb

    for mod in pkgutil.walk_packages(kb.__path__, "kb."):
        if (
            mod.name.startswith(("kb.testing", "kb.cli", "kb.integrations", "kb.__main__"))
            or mod.name == "kb.errors"
        ):
            continue
        module = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, errors.KbError) and obj.__module__ == mod.name:
                pytest.fail(f"{mod.name}.{obj.__name__} is a KbError outside kb.errors")


@pytest.mark.parametrize(
    ("argv", "method"),
    [
        (["search", "alpha"], "search"),
        (["ask", "alpha?"], "ask"),
        (["status"], "status"),
        (["index"], "index"),
    ],
)
def test_one_cli_verb_is_one_request(owner: tuple[Path, Owner], argv: list[str], method: str) -> None:
    ws, dispatch = owner
    out = subprocess.run(
        [sys.executable, "-m", "kb", *argv, "--workspace", str(ws), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    json.loads(out.stdout)
    assert [m for m, _ in dispatch.calls] == [method]


def test_remote_results_are_kb_types(owner: tuple[Path, Owner]) -> None:
    ws, dispatch = owner
    remote = connect(ws)
    assert remote is not None
    with remote:
        assert remote.search("alpha", 3, mode="bm25", source_type=["prd"], path="a*") == [HIT]
        assert dataclasses.asdict(remote.ask("q?", persona="auto")) == dataclasses.asdict(ANSWER)
        assert remote.status() == STATUS
    assert dispatch.calls[0] == (
        "search",
        {"query": "alpha", "k": 3, "mode": "bm25", "source_type": ["prd"], "path": "a*"},
    )
