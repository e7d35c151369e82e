"""The judge of benchmarks/bench_llm.py (benchmarks/judge.py) on sentence pairs whose answer a reader knows.

The benchmark's supported share is only as good as this judge, so the judge gets its own test: it must reject
a negated claim (the case kb's own stop words hide: "not" is a stop word in kb.answer.verify), a wrong number
and an unrelated quote, and accept faithful paraphrases.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

JUDGE = Path(__file__).resolve().parents[1] / "benchmarks" / "judge.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_judge", JUDGE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


judge = _load().judge

QUOTE = "The Orders API uses cursor-based pagination and returns at most 1,000 items per page."


@pytest.mark.parametrize(
    "sentence",
    [
        "The Orders API uses cursor-based pagination.",
        "Orders API pages hold at most 1000 items.",  # 1,000 = 1000
        "The Orders API returns 1,000 items per page at most, using cursor-based pagination.",
    ],
)
def test_supported(sentence: str) -> None:
    v = judge(sentence, QUOTE)
    assert v.supported, v.reason


@pytest.mark.parametrize(
    ("sentence", "why"),
    [
        ("The Orders API does not use cursor-based pagination.", "polarity"),  # kb's stop words drop "not"
        ("The Orders API doesn't use cursor-based pagination.", "polarity"),
        ("The Orders API never uses cursor-based pagination.", "polarity"),
        ("The Orders API returns at most 100 items per page.", "numbers"),
        ("The Orders API returns at most 1,000 items per page in 2 seconds.", "numbers"),
        ("Store configuration in environment variables.", "coverage"),
    ],
)
def test_not_supported(sentence: str, why: str) -> None:
    v = judge(sentence, QUOTE)
    assert not v.supported and v.reason.startswith(why), v


def test_negation_both_ways_and_scoped_to_its_clause() -> None:
    negative = "Services do not share databases, but they share a message bus."
    assert not judge("Services share databases.", negative).supported
    assert judge("Services don't share databases.", negative).supported
    assert judge("Services share a message bus.", negative).supported  # "but" ends the negation's scope
    assert not judge("Services do not share databases.", "Services share databases.").supported
