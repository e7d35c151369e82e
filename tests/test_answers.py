"""Answers an expert would give: self-contained units, the team's decision first, resource guidance labelled,
persona sections only where they earn it, who owns the service, retrieval of the team's own sections, and the
labelled answer set (``kb eval --answers``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from kb import KnowledgeBase
from kb.answer.compose import entities
from kb.answer.retrieval import Filters
from kb.answer.units import render, units_of
from kb.cli.render import print_answer
from kb.evaluate_answers import fragment_reason, label_matches, read_answer_set
from kb.models import Answer, Citation, Hit
from kb.personas import parse_persona
from kb.prompts import GUIDANCE, NO_TEAM_CONTEXT, OWNER, TEAM_FILTERED_OUT
from kb.testing import run_kb, verify_citation

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = ROOT / "benchmarks" / "questions" / "answers.jsonl"


def hit(text: str, start: int = 10, source_type: str = "resource") -> Hit:
    return Hit(1, 1.0, "doc.md", start, start + text.count("\n"), "Doc › Part", text, source_type)


# --- self-contained units ------------------------------------------------------------------------------
def test_a_list_introduction_comes_with_its_items_or_not_at_all() -> None:
    text = (
        "Caching improves page load times.\n\nSuggestions of what to cache:\n\n* User sessions\n"
        "* Fully rendered web pages\n\n### When to update the cache\n\nThe vulnerable SQL call is:\n"
        "```\nSELECT * FROM accounts WHERE id = '\" + id + \"'\n```\n"
    )
    units = units_of(hit(text))
    shown = [u.text for u in units]
    assert "Suggestions of what to cache:\n- User sessions\n- Fully rendered web pages" in shown
    assert not any(t.endswith(":") for t in shown), "an introduction without its list is never shown"
    assert not any("When to update the cache" in t for t in shown), "headings are not sentences"
    assert not any("vulnerable SQL call" in t for t in shown), "its 'list' is code: not shown at all"
    lst = next(u for u in units if u.kind == "list")
    assert (lst.start_line, lst.end_line) == (12, 15)
    over = "Too many:\n" + "".join(f"- item number {i}\n" for i in range(12))
    assert units_of(hit(over)) == [], "over the budget: neither the introduction nor a fragment of it"


def test_table_rows_carry_their_header_and_both_are_cited() -> None:
    text = (
        "| Service | Owning team |\n|---|---|\n| ledger-api | Billing |\n"
        "| notifications-service | Engagement |"
    )
    units = units_of(hit(text, start=40, source_type="context"))
    assert [u.text for u in units] == [
        "Service: ledger-api; Owning team: Billing.",
        "Service: notifications-service; Owning team: Engagement.",
    ]
    assert units[1].header == (40, "| Service | Owning team |") and units[1].start_line == 43


def test_no_heading_like_fragments_bare_links_or_lost_link_text() -> None:
    text = (
        "Need to cache millions of queries\n\n"
        "- [Why REST for internal use and not RPC](http://example.org/rest)\n"
        "- We should discuss the [](https://github.com/x#sql-or-nosql).\n"
        "- We should discuss the [use cases and tradeoffs](https://github.com/x#sql-or-nosql).\n"
        "- See [the guide](../guide.md) for the details of every option.\n"
        "- ![diagram](img/a.png) The cache sits in front of the database.\n"
    )
    shown = [u.text for u in units_of(hit(text))]
    assert shown == [
        "We should discuss the use cases and tradeoffs (https://github.com/x#sql-or-nosql).",
        "See the guide for the details of every option.",
        "The cache sits in front of the database.",
    ]
    assert render("<b>Use</b> [docs](javascript:void) &amp; more") == "Use docs & more"


def test_every_unit_quote_is_at_its_lines_of_a_real_file(tmp_path: Path) -> None:
    doc = ROOT.parent / "shared" / "resources" / "system-design-primer" / "README.md"
    if not doc.exists():
        pytest.skip("needs ../shared/resources")
    lines = doc.read_text(encoding="utf-8").split("\n")
    h = Hit(1, 1.0, "README.md", 1000, 1320, "Cache", "\n".join(lines[999:1320]), "resource")
    units = units_of(h)
    assert len(units) > 20 and any(u.kind == "list" for u in units)
    for u in units:
        assert verify_citation(doc.parent, "README.md", u.start_line, u.end_line, u.quote), u
        assert fragment_reason(u.text) is None, u.text


def test_the_terminal_shows_link_text_and_citation_markers() -> None:
    console = Console(record=True, width=300)
    text = (
        "- We should discuss the use cases and tradeoffs (https://x.example/#sql). [1]\n"
        "- [link removed] here [2]"
    )
    print_answer(
        console, Answer("q", None, text, False, [Citation(1, "a.md", 1, 1, "H", "[use cases] q", 0.5)])
    )
    shown = console.export_text()
    assert "the use cases and tradeoffs (https://x.example/#sql). [1]" in shown
    assert "[link removed] here [2]" in shown and '"[use cases] q"' in shown


# --- the evaluator's own fragment rules ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Suggestions of what to cache:", "dangling colon"),
        ("When to update the cache", "heading-like (no sentence end)"),
        ("[Why REST](http://example.org/rest)", "raw link markup"),
        ("We should discuss the (https://github.com/x#sql).", "link text lost"),
        ("https://example.org/a", "bare link or too short"),
        ("and then it is written back to the cache.", "starts mid-sentence"),
        ("The **default is cache-aside in Redis.", "markup debris"),
        ("Use `sqlalchemy.text()` with bind parameters.", None),
        ("Suggestions of what to cache:\n- User sessions\n- Activity streams", None),
        ("Service: ledger-api; Owning team: Billing.", None),
    ],
)
def test_fragment_rules(text: str, reason: str | None) -> None:
    assert fragment_reason(text) == reason


def test_labels_match_sections_paths_and_globs() -> None:
    crumb = "Acme Ledger Tech Stack › Caching strategy"
    assert label_matches(
        ".workos/context/tech-stack.md#Caching strategy", ".workos/context/tech-stack.md", crumb
    )
    assert label_matches(".workos/context/tech-stack.md", ".workos/context/tech-stack.md", crumb)
    assert not label_matches(
        ".workos/context/tech-stack.md#Acme Ledger Tech Stack", ".workos/context/tech-stack.md", crumb
    )
    assert label_matches("x/*#How to Prevent", "x/A03.md", "A03 › How to Prevent")


def test_the_labelled_answer_set_is_big_enough_and_split_in_halves() -> None:
    items = read_answer_set(ANSWERS)
    assert len(items) >= 40
    halves = {s: [i for i in items if i.split == s] for s in ("tune", "report")}
    assert abs(len(halves["tune"]) - len(halves["report"])) <= 1
    for i in items:
        assert i.facts and (i.team or i.resources), i.question
        assert set(i.answer_sections) <= set(i.team)
    kinds = {i.kind for i in items}
    assert {"consult", "paraphrase", "team", "resource"} <= kinds


def test_persona_context_files_include_folders() -> None:
    p = parse_persona(
        "# P\n\n## Context Files I Use\n\n- `.workos/context/team-directory.md` - Who owns which services\n"
        "- Project files in `projects/prds/` - Requirements\n",
        "p",
    )
    assert p.context_files == [
        (".workos/context/team-directory.md", "Who owns which services"),
        ("projects/prds/", "Project files in Requirements"),
    ]


def test_path_filters_keep_the_leading_dot_of_workos() -> None:
    assert Filters.make(None, [".workos/context/*"]).paths == (".workos/context/*",)
    assert Filters.make(None, ["./projects/prds/*"]).paths == ("projects/prds/*",)
    assert entities("Who do I page when notifications-service is down?") == ["notifications-service"]
    assert entities("Who owns the notifications service?") == ["notifications-service"]


# --- with the real model on the sample workspace ----------------------------------------------------------
def test_the_team_decision_leads_and_every_quote_is_real(indexed: Path) -> None:
    kb = KnowledgeBase.open(indexed)
    answer = kb.ask("What's the right caching strategy?", persona="backend-engineer")
    cites = {c.id: c for c in answer.citations}
    first = cites[answer.sentences[0].citations[-1]]
    assert first.path in (".workos/context/tech-stack.md", ".workos/context/architecture-decisions.md")
    assert "cache-aside" in answer.answer.lower()
    for c in answer.citations:
        assert verify_citation(indexed, c.path, c.start_line, c.end_line, c.quote), c
    for s in answer.sentences:
        assert fragment_reason(s.text) is None, s.text
    shown = [s.text for s in answer.sentences]
    assert len(shown) == len(set(shown)) and len(shown) <= 12


def test_who_owns_the_service_the_question_names(indexed: Path) -> None:
    kb = KnowledgeBase.open(indexed)
    answer = kb.ask("Who do I page when notifications-service is down at night?", persona="backend-engineer")
    assert not answer.abstained
    assert "Engagement" in answer.answer
    assert f"**{OWNER}**" in answer.answer or any("on-call" in s.text for s in answer.sentences)


def test_only_resources_speak_the_answer_says_the_workspace_has_nothing(indexed: Path) -> None:
    folder = indexed / ".workos/resources/example.org-dns"
    folder.mkdir(parents=True)
    (folder / "dns.md").write_text(
        "---\nurl: https://example.org/dns\ntitle: DNS\n---\n\n# Domain name system\n\n"
        "A domain name system translates a domain name such as www.example.com to an IP address.\n\n"
        "DNS is hierarchical, with a few authoritative servers at the top level.\n",
        encoding="utf-8",
    )
    kb = KnowledgeBase.open(indexed)
    answer = kb.ask("How does DNS translate a domain name to an IP address?", persona="backend-engineer")
    assert refreshed_first(answer.refreshed, ".workos/resources/example.org-dns/dns.md")
    assert NO_TEAM_CONTEXT in answer.answer and "(https://example.org/dns)" in answer.answer
    assert {c.path for c in answer.citations} == {".workos/resources/example.org-dns/dns.md"}
    # filters that leave the team's sources out: their silence says nothing, and the answer does not claim it
    for only in ({"source_type": "resource"}, {"path": ".workos/resources/*"}):
        filtered = kb.ask("How does DNS translate a domain name?", persona="backend-engineer", **only)
        assert TEAM_FILTERED_OUT in filtered.answer and NO_TEAM_CONTEXT not in filtered.answer, only
        assert {c.path for c in filtered.citations} == {".workos/resources/example.org-dns/dns.md"}
    team = kb.ask("What's the right caching strategy?", persona="backend-engineer")
    assert NO_TEAM_CONTEXT not in team.answer
    if GUIDANCE in team.answer:  # resource guidance, when shown, comes after the team's decision
        assert team.answer.index(GUIDANCE) > team.answer.index("- ")


def refreshed_first(refreshed: list[str], path: str) -> bool:
    return path in refreshed


def test_search_finds_the_on_call_section_the_notifications_prd_used_to_hide(indexed: Path) -> None:
    """The notifications PRD names notifications-service in every section; without the priors (crowding, team
    headings) it took all 8 slots before the team directory's on-call section."""
    kb = KnowledgeBase.open(indexed)
    hits = kb.search("Who do I page when notifications-service is down at night?", k=8)
    top = [(h.path, h.heading.split(" › ")[-1]) for h in hits]
    assert (".workos/context/team-directory.md", "On-call rotation") in top, top
    scale = kb.search("How do I scale this service?", k=3)
    assert scale[0].heading.endswith("Scaling services"), [h.heading for h in scale]


def test_kb_eval_answers_reports_the_metrics(indexed: Path, tmp_path: Path) -> None:
    items = [json.loads(line) for line in ANSWERS.read_text().splitlines() if line.strip()]
    small = [
        i
        for i in items
        if i["question"]
        in (
            "What's the right caching strategy?",
            "How long are usage export files kept?",
            "Which team owns the export worker?",
        )
    ]
    qfile = tmp_path / "answers.jsonl"
    qfile.write_text("".join(json.dumps(i) + "\n" for i in small))
    r = run_kb("eval", "--answers", str(qfile), "--workspace", str(indexed), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    overall = data["all"]
    assert overall["questions"] == 3 and overall["answered"] == 3
    assert overall["fragments"] == 0 and overall["supported"] == 1.0
    assert overall["leads_with_team_context"] >= 2 / 3 and overall["key_fact_recall"] >= 0.5
    assert {"tune", "report", "results"} <= set(data)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "colour": "red"}\n')
    r = run_kb("eval", "--answers", str(bad), "--workspace", str(indexed))
    assert r.returncode == 1 and "unknown field(s) colour" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# --- the same discipline for a language model -------------------------------------------------------------
class Scripted:
    """A Generator that answers from the prompt it is given: the resource's sentence first, a label, then the
    team's sentence (in that order, to see kb put the team's first)."""

    name = "scripted"
    context_window = 4096

    def __init__(self) -> None:
        self.prompt = ""

    def generate(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, on_token: object = None
    ) -> str:
        self.prompt = messages[0]["content"] + "\n" + messages[1]["content"]
        blocks = re.findall(r"<<<BEGIN SOURCE \[(\d+)\] \S+>>>\nfrom: (.*?)\n", self.prompt)
        res = next(n for n, loc in blocks if loc.endswith("· resource"))
        team = next(n for n, loc in blocks if "tech-stack.md" in loc and loc.endswith("· team"))
        return (
            f"Cache-aside loads data into the cache only when it is requested [{res}].\n"
            f"Caching strategy [{team}]\n"
            f"The default caching strategy is cache-aside in Redis [{team}]."
        )


def add_cache_resource(ws: Path) -> None:
    """A fetched resource on cache-aside (general guidance, with its URL)."""
    folder = ws / ".workos/resources/example.org-cache"
    folder.mkdir(parents=True)
    (folder / "cache.md").write_text(
        "---\nurl: https://example.org/cache\n---\n\n# Cache-aside\n\n"
        "Cache-aside loads data into the cache only when it is requested, which keeps the cache small.\n",
        encoding="utf-8",
    )


def test_the_model_answer_puts_the_team_first_and_drops_labels(indexed: Path) -> None:
    add_cache_resource(indexed)
    model = Scripted()
    with KnowledgeBase.open(indexed, generator=model) as kb:
        answer = kb.ask("What's the right caching strategy?", persona="backend-engineer")
    assert "Start with what the team decided or requires" in " ".join(model.prompt.split())
    shown = [s.text for s in answer.sentences if s.supported]
    assert "Caching strategy" not in shown, "a label is no sentence"
    body = answer.answer
    team_at = body.index("The default caching strategy is cache-aside in Redis")
    assert team_at < body.index(f"**{GUIDANCE}**") < body.index("Cache-aside loads data into the cache")


class ResourceOnly(Scripted):
    """Writes the cache resource's sentence only (the question is filtered to the resources)."""

    def generate(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, on_token: object = None
    ) -> str:
        blocks = re.findall(r"<<<BEGIN SOURCE \[(\d+)\] \S+>>>\nfrom: (.*?)\n", messages[1]["content"])
        res = next(n for n, loc in blocks if "example.org-cache" in loc)
        return f"Cache-aside loads data into the cache only when it is requested [{res}]."


def test_the_model_answer_does_not_say_the_workspace_is_silent_when_filters_left_the_team_out(
    indexed: Path,
) -> None:
    add_cache_resource(indexed)
    with KnowledgeBase.open(indexed, generator=ResourceOnly()) as kb:
        filtered = kb.ask("What's the right caching strategy?", source_type="resource")
        unfiltered = kb.ask("What's the right caching strategy?")
    assert TEAM_FILTERED_OUT in filtered.answer and NO_TEAM_CONTEXT not in filtered.answer
    assert "Cache-aside loads data into the cache" in filtered.answer
    # the same reply to an unfiltered question: the team was searched and none of its sources was cited
    assert NO_TEAM_CONTEXT in unfiltered.answer and TEAM_FILTERED_OUT not in unfiltered.answer
