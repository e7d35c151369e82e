"""Personas: markdown documents describing an expert advisor (the format of the backend-engineer seed).

Parsing is tolerant: every section is optional, but a document with neither a ``# Title`` nor any of the known
sections is not a persona (``PersonaFormatError``). Bundled personas ship in the ``personas`` package; a file
``.workos/personas/<name>.md`` in a workspace overrides the bundled persona of the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ingest.layout import PERSONAS_DIR
from kb.errors import PersonaFormatError, PersonaNotFoundError
from kb.models import PersonaInfo

KNOWN_SECTIONS = {
    "expertise",
    "principles",
    "when to consult me",
    "how i work",
    "context files i use",
    "example consultations",
    "my guardrails",
    "tools & resources i recommend",
    "collaboration with other agents",
    "remember",
}


@dataclass
class ResourceLink:
    """A link under a persona's resources section: ``[title](url) - why``."""

    title: str
    url: str
    why: str = ""


@dataclass
class Consideration:
    label: str
    description: str = ""


@dataclass
class Persona:
    name: str  # file stem, e.g. "backend-engineer"
    title: str  # "Backend Engineer"
    origin: str = "bundled"
    path: str = ""
    agent_type: str = ""
    domain: str = ""
    personality: str = ""
    expertise: list[str] = field(default_factory=list)
    principles: list[str] = field(default_factory=list)
    when_to_consult: dict[str, list[str]] = field(default_factory=dict)
    how_i_work: str = ""
    context_files: list[tuple[str, str]] = field(default_factory=list)
    wont_do: list[Consideration] = field(default_factory=list)
    always_consider: list[Consideration] = field(default_factory=list)
    key_resources: list[ResourceLink] = field(default_factory=list)
    collaborators: list[str] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)

    def lore(self) -> list[str]:
        """The persona's expertise and principle lines: what its priorities mean to it, in its own words."""
        lines = list(self.expertise)
        for line in self.sections.get("principles", "").splitlines():
            m = _BULLET.match(line)
            if m:
                lines.append(m.group(1).strip())
        return lines

    @property
    def consult_questions(self) -> list[str]:
        return [q for qs in self.when_to_consult.values() for q in qs]

    def info(self) -> PersonaInfo:
        return PersonaInfo(self.name, self.title, self.origin, self.path, self.domain)


_H = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FIELD = re.compile(r"^\*\*(.+?):\*\*\s*(.*)$")
_LABELLED = re.compile(r"^\s*[-*]\s+\*\*(.+?)\*\*\s*(?:[-–—:]\s*(.*))?$")
_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)\s*(?:[-–—:]\s*(.*))?")
_QUOTED = re.compile(r"^\s*[-*]\s+[\"“](.+?)[\"”]\s*$")
_BULLET = re.compile(r"^\s*[-*]\s+(.*)$")


def parse_persona(text: str, name: str, origin: str = "bundled", path: str = "") -> Persona:
    lines = text.splitlines()
    title = ""
    fields: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    subsections: dict[str, dict[str, list[str]]] = {}
    current: str | None = None
    sub: str | None = None
    in_code = False
    for line in lines:
        if line.strip().startswith("```"):
            in_code = not in_code
        m = _H.match(line) if not in_code else None
        if m and len(m.group(1)) == 1 and not title:
            title = m.group(2).strip()
            continue
        if m and len(m.group(1)) == 2:
            current = m.group(2).strip().lower()
            sub = None
            sections.setdefault(current, [])
            subsections.setdefault(current, {})
            continue
        if m and len(m.group(1)) >= 3 and current:
            sub = m.group(2).strip()
            subsections[current].setdefault(sub, [])
            sections[current].append(line)
            continue
        if current is None:
            f = _FIELD.match(line.strip())
            if f:
                fields[f.group(1).strip().lower()] = f.group(2).strip()
            continue
        sections[current].append(line)
        if sub:
            subsections[current][sub].append(line)
    if not title and not (KNOWN_SECTIONS & set(sections)):
        raise PersonaFormatError(
            f"{path or name} is not a persona: it has no '# Title' and none of the sections "
            "'## Expertise', '## When to Consult Me', '## My Guardrails', ... "
            "(see personas/backend-engineer.md)."
        )
    p = Persona(
        name=name,
        title=title or name.replace("-", " ").title(),
        origin=origin,
        path=path,
        agent_type=fields.get("agent type", ""),
        domain=fields.get("domain", ""),
        personality=fields.get("personality", ""),
        sections={k: "\n".join(v).strip() for k, v in sections.items()},
    )
    for line in sections.get("expertise", []):
        b = _LABELLED.match(line)
        if b:
            p.expertise.append(f"{b.group(1)}: {b.group(2) or ''}".strip(": "))
    for line in sections.get("principles", []):
        h = _H.match(line)
        if h:
            p.principles.append(re.sub(r"^\d+\.\s*", "", h.group(2)).strip())
    for group, body in subsections.get("when to consult me", {}).items():
        qs = [m.group(1) for m in map(_QUOTED.match, body) if m]
        if qs:
            p.when_to_consult[group] = qs
    p.how_i_work = "\n".join(sections.get("how i work", [])).strip()
    for line in sections.get("context files i use", []):  # "- `path` - why" or "- Project files in `dir/`"
        m = re.match(r"^\s*[-*]\s+(.*?)`([^`]+)`\s*(?:[-–—:]\s*(.*))?$", line)
        if m:
            why = " ".join(x.strip() for x in (m.group(1), m.group(3) or "") if x and x.strip())
            p.context_files.append((m.group(2).strip(), why))
    guard = subsections.get("my guardrails", {})
    for sub_name, body in guard.items():
        labelled = [m for m in map(_LABELLED.match, body) if m]
        items = [Consideration(m.group(1).strip(), (m.group(2) or "").strip()) for m in labelled]
        if "always" in sub_name.lower():
            p.always_consider.extend(items)
        elif "won" in sub_name.lower() or "not" in sub_name.lower():
            p.wont_do.extend(items)
    for key, body in sections.items():
        if "resource" in key:
            for line in body:
                m = _LINK.search(line)
                if m:
                    link = ResourceLink(m.group(1).strip(), m.group(2).strip(), (m.group(3) or "").strip())
                    p.key_resources.append(link)
    for line in sections.get("collaboration with other agents", []):
        b = _LABELLED.match(line)
        if b:
            p.collaborators.append(b.group(1).strip())
    return p


def load_persona_file(path: Path, origin: str) -> Persona:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaFormatError(f"Cannot read persona {path}: {exc}") from None
    return parse_persona(text, path.stem, origin=origin, path=str(path))


def bundled_dir() -> Path:
    return Path(str(resources.files("personas")))


def available(workspace_personas: Path | None) -> dict[str, Path | tuple[str, Path]]:
    """name -> (origin, path); workspace files override bundled ones."""
    found: dict[str, tuple[str, Path]] = {}
    for p in sorted(bundled_dir().glob("*.md")):
        found[p.stem] = ("bundled", p)
    if workspace_personas and workspace_personas.is_dir():
        for p in sorted(workspace_personas.glob("*.md")):
            found[p.stem] = ("workspace", p)
    return found  # type: ignore[return-value]


def list_personas(workspace_personas: Path | None) -> list[Persona]:
    out = []
    for _name, (origin, path) in sorted(available(workspace_personas).items()):  # type: ignore[misc]
        try:
            out.append(load_persona_file(path, origin))
        except PersonaFormatError:
            continue
    return out


def get_persona(name: str, workspace_personas: Path | None) -> Persona:
    key = name.lower().strip().replace(" ", "-").removesuffix(".md")
    table = available(workspace_personas)
    if key not in table:
        names = ", ".join(sorted(table)) or "(none)"
        raise PersonaNotFoundError(
            f"No persona named {name!r}. Available: {names}. Add one as {PERSONAS_DIR}/{key}.md "
            "(see personas/backend-engineer.md for the format)."
        )
    origin, path = table[key]  # type: ignore[misc]
    return load_persona_file(path, origin)
