"""Persona parsing: the seed format, bundled personas, tolerance and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb import PersonaFormatError
from kb.personas import bundled_dir, load_persona_file, parse_persona

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "backend-engineer.md"


@pytest.mark.skipif(not SEED.exists(), reason="../shared/seed/backend-engineer.md is not available here")
def test_seed_persona_parses() -> None:
    p = load_persona_file(SEED, "seed")
    assert p.title == "Backend Engineer"
    assert p.agent_type == "Technical Expert"
    assert "System Design" in p.domain
    assert len(p.principles) == 4 and p.principles[0] == "Reliability First"
    assert len(p.consult_questions) == 20
    assert "How do I handle pagination for large datasets?" in p.consult_questions
    assert [c.label for c in p.always_consider] == [
        "Security implications",
        "Failure modes",
        "Data integrity",
        "Performance impact",
        "Operational complexity",
    ]
    assert {r.url for r in p.key_resources} == {
        "https://github.com/donnemartin/system-design-primer",
        "https://www.databass.dev/",
        "https://owasp.org/www-project-top-ten/",
        "https://12factor.net/",
        "https://cloud.google.com/apis/design",
    }
    assert ".workos/context/tech-stack.md" in [f for f, _ in p.context_files]
    assert "Frontend Engineer" in p.collaborators


def test_bundled_personas_parse_and_keep_the_seed_facts() -> None:
    names = {p.stem for p in bundled_dir().glob("*.md")}
    assert {
        "backend-engineer",
        "frontend-engineer",
        "engineering-lead",
        "senior-pm",
        "business-analyst",
    } <= names
    for path in bundled_dir().glob("*.md"):
        p = load_persona_file(path, "bundled")
        assert p.title and p.always_consider and p.key_resources and p.consult_questions, path.name
    backend = load_persona_file(bundled_dir() / "backend-engineer.md", "bundled")
    assert len(backend.key_resources) == 5
    if SEED.exists():
        seed = load_persona_file(SEED, "seed")
        assert {r.url for r in backend.key_resources} == {r.url for r in seed.key_resources}
        assert backend.consult_questions == seed.consult_questions
        assert [c.label for c in backend.always_consider] == [c.label for c in seed.always_consider]


def test_tolerant_of_missing_sections() -> None:
    p = parse_persona("# Data Steward\n\nKeeps the data clean.\n", "data-steward")
    assert p.title == "Data Steward" and p.always_consider == [] and p.key_resources == []


def test_not_a_persona_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "notes.md"
    f.write_text("just some notes\n\n- a list\n")
    with pytest.raises(PersonaFormatError, match="not a persona"):
        load_persona_file(f, "workspace")
