"""The one answering seam: the ``llm`` setting names the answer's backend, a
:class:`kb.backends.llm.Generator` is the model.

* ``extractive`` (the default): :class:`kb.answer.extractive.ExtractiveAnswerer`, no model, every sentence a
  verbatim quote;
* anything else: :class:`kb.answer.generated.LLMAnswerer` over the generator that ``llm`` names, or over the
  one injected with ``KnowledgeBase.open(path, generator=...)``, its answer verified sentence by sentence.

A generator is the one thing a user implements; answerers are kb's. Every answerer returns an
:class:`kb.models.Answer` whose ``sentences`` carry their citation ids, so nothing reads the rendered text
back.
"""

from __future__ import annotations

from typing import Protocol

from kb.answer.evidence import Embed, Evidence
from kb.answer.extractive import ExtractiveAnswerer
from kb.answer.generated import LLMAnswerer
from kb.backends.llm import Generator, make_generator
from kb.models import Answer, OnToken
from kb.personas import Persona
from kb.settings import Settings

__all__ = ["Answerer", "Embed", "OnToken", "make_answerer"]


class Answerer(Protocol):
    name: str

    def answer(self, evidence: Evidence, persona: Persona | None) -> Answer: ...


def make_answerer(
    spec: str | None,
    settings: Settings,
    embed: Embed,
    embed_cached: Embed,
    *,
    injected: Generator | None = None,
    cache: dict[str, Generator] | None = None,
    on_token: OnToken | None = None,
) -> Answerer:
    """The answerer for ``spec``; ``None`` means the injected generator, or the ``llm`` setting without one.

    Generators named by a spec are built once into ``cache``.
    """
    generator: Generator | None
    if not spec and injected is not None:
        generator = injected
    else:
        key = (spec or settings.llm).strip()
        cache = cache if cache is not None else {}
        generator = cache.get(key) or make_generator(key, settings)
        if generator is None:
            return ExtractiveAnswerer(embed_cached, settings.min_relevance)
        cache[key] = generator
    return LLMAnswerer(
        generator,
        embed,
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
        unsupported=settings.llm_unsupported,
        on_token=on_token,
    )
