"""The commented kb.toml of ``kb init`` is generated from the Settings model: every key, its description and
its default, and nothing that would change a setting."""

from __future__ import annotations

import re
import tomllib

from pydantic import BaseModel

from kb.settings import ResourcesSettings, Settings, load_settings, toml_template

KEY = re.compile(r"^# (\[\w+\]|\w+ = .*)$")


def uncommented(template: str) -> str:
    """The template with its ``# key = value`` and ``# [table]`` lines uncommented (trailing notes
    dropped)."""
    lines = []
    for line in template.splitlines():
        m = KEY.match(line)
        if m:
            lines.append(m.group(1).split("  # ")[0])
    return "\n".join(lines) + "\n"


def test_template_is_all_comments() -> None:
    assert tomllib.loads(toml_template()) == {}


def test_template_lists_every_key_with_its_description() -> None:
    text = toml_template()
    data = tomllib.loads(uncommented(text))
    for model, where in ((Settings, data), (ResourcesSettings, data["resources"])):
        for name, info in model.model_fields.items():
            assert name in where, f"{name} missing from the kb.toml template"
            if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
                assert info.description and info.description.split()[0] in text


def test_template_values_are_the_defaults_or_marked_unset() -> None:
    text = toml_template()
    data = tomllib.loads(uncommented(text))
    unset = {m.group(1) for m in re.finditer(r"^# (\w+) = .*  # unset by default$", text, re.M)}
    for model, where in ((Settings, data), (ResourcesSettings, data["resources"])):
        for name, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                continue
            assert (default is None and name in unset) or where[name] == default, name
    # Uncommented, the template is a valid kb.toml (the examples of unset keys included).
    assert load_settings(None, **data).top_k == 5
