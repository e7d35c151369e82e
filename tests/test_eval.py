"""kb eval: BEIR-format datasets through kb's own indexing, and a workspace's own question set."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb.cli import app
from kb.evaluate import mrr_at, ndcg_at, recall_at

ROOT = Path(__file__).resolve().parents[1]

DOCS = [
    ("d1", "Cats", "Domestic cats purr when they are content and knead soft blankets with their paws."),
    ("d2", "Dogs", "Dogs bark at strangers, guard the house and love long walks in the park."),
    (
        "d3",
        "Rust",
        "The Rust borrow checker prevents data races at compile time without a garbage collector.",
    ),
    ("d4", "Tides", "Ocean tides are caused by the gravitational pull of the moon and the sun."),
    ("d5", "Bread", "Sourdough bread rises because wild yeast and lactobacilli ferment the dough."),
]
QUERIES = [
    ("q1", "why do cats purr", "d1"),
    ("q2", "memory safety checked by the compiler", "d3"),
    ("q3", "what makes the sea rise and fall", "d4"),
    ("q4", "fermentation of sourdough", "d5"),
]


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    ds = tmp_path / "tiny-beir"
    (ds / "qrels").mkdir(parents=True)
    (ds / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in DOCS)
    )
    (ds / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t, _ in QUERIES)
    )
    (ds / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, _, d in QUERIES)
    )
    for p in [ds / "qrels" / "test.tsv", ds / "corpus.jsonl", ds / "queries.jsonl", ds / "qrels", ds]:
        p.chmod(
            p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        )  # the dataset may be read-only
    return ds


def test_metrics_match_hand_computed_values() -> None:
    rels = {"a": 1, "b": 1}
    assert ndcg_at(["a", "b", "c"], rels) == pytest.approx(1.0)
    assert ndcg_at(["c", "a"], rels) == pytest.approx((1 / 1.5849625) / (1 + 1 / 1.5849625))
    assert mrr_at(["c", "x", "b"], rels) == pytest.approx(1 / 3)
    assert recall_at(["a"] + ["z"] * 200, rels, 100) == 0.5
    assert ndcg_at(["x"] * 10 + ["a"], rels) == 0.0


def test_beir_eval_indexes_once_then_only_queries(beir: Path, tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    runner = CliRunner()
    first = runner.invoke(app, ["eval", str(beir), "--json"], env=env)
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert {"ndcg@10", "recall@100", "mrr@10", "latency_ms_p50", "latency_ms_p95", "queries", "mode"} <= set(
        data
    )
    assert data["mode"] == "hybrid" and data["queries"] == 4 and data["documents"] == 5
    assert data["chunks_embedded"] == 5
    assert data["ndcg@10"] == 1.0 and data["recall@100"] == 1.0, "each query's document is plainly the best"
    assert Path(data["index_dir"]).is_relative_to(tmp_path / "cache")
    second = runner.invoke(app, ["eval", str(beir), "--json", "--mode", "bm25", "--mode", "dense"], env=env)
    assert second.exit_code == 0, second.output
    results = json.loads(second.output)["results"]
    assert [r["mode"] for r in results] == ["bm25", "dense"]
    assert all(r["chunks_embedded"] == 0 for r in results), "a second run only queries"
    table = runner.invoke(app, ["eval", str(beir)], env=env)
    assert table.exit_code == 0 and "nDCG@10" in table.output and "hybrid" in table.output


def test_beir_eval_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "is not a folder" in res.output
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "queries.jsonl").write_text("{}\n")
    res = runner.invoke(app, ["eval", str(tmp_path / "half")])
    assert res.exit_code == 1 and "missing corpus.jsonl[.gz]" in res.output and "qrels/test.tsv" in res.output
    (tmp_path / "half" / "corpus.jsonl").write_text("{}\n")
    (tmp_path / "half" / "qrels").mkdir()
    (tmp_path / "half" / "qrels" / "train.tsv").write_text("q\td\t1\n")
    res = runner.invoke(app, ["eval", str(tmp_path / "half")])
    assert res.exit_code == 1 and "pass --split train" in res.output


def test_questions_file_eval_scores_the_workspace(indexed: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps(
            {
                "question": "What are the rate limits for the notifications API?",
                "expected": ["projects/prds/notifications.md"],
            }
        )
        + "\n"
        + json.dumps(
            {
                "question": "Who is the technical owner of the notifications service?",
                "expected": [".workos/context/team-directory.md#Service ownership"],
            }
        )
        + "\n"
        + json.dumps({"question": "Who won the 1998 World Cup?", "expected": []})
        + "\n"
        + json.dumps({"question": "Where is the walrus policy?", "expected": ["nowhere.md"]})
        + "\n"
    )
    res = CliRunner().invoke(app, ["eval", str(questions), "--workspace", str(indexed), "--json", "-k", "5"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["questions"] == 3, "unanswerable questions are not scored for retrieval"
    ranks = [r["rank"] for r in data["results"]]
    assert ranks[0] is not None and ranks[1] is not None and ranks[2] is None
    assert data["hit@5"] == pytest.approx(2 / 3, abs=1e-3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": 1}\n')
    res = CliRunner().invoke(app, ["eval", str(bad), "--workspace", str(indexed)])
    assert res.exit_code == 1 and "line 1" in res.output


def test_sample_question_set_through_the_cli(indexed: Path) -> None:
    res = CliRunner().invoke(
        app, ["eval", str(ROOT / "benchmarks/questions/sample-workspace.jsonl"), "--workspace", str(indexed)]
    )
    assert res.exit_code == 0, res.output
    assert "hit@1" in res.output and "MRR" in res.output
