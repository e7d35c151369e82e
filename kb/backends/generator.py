"""The ``Generator`` protocol: the one thing to implement for kb's answers to be written by a language model.

A generator turns chat messages into a reply, streaming its pieces to ``on_token``. kb builds the messages
(:mod:`kb.answer.grounding`) and checks every sentence of the reply (:mod:`kb.answer.verify`); the generator
only talks to the model. Backends: :mod:`kb.backends.openai_compat`, :mod:`kb.backends.llamacpp` and
:class:`kb.backends.llm.LlamaIndexGenerator`; :func:`kb.backends.llm.make_generator` picks one by name.
"""

from __future__ import annotations

import re
from typing import Protocol

from kb.models import OnToken

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}

# How backends recognise "the prompt does not fit the model's window" in an error message.
CONTEXT_OVERFLOW = re.compile(
    r"context[ _-]?(length|window|size)|too (long|many tokens)|exceeds? .*(context|tokens)|maximum context",
    re.I,
)


class Generator(Protocol):
    """A chat model: ``generate`` returns the reply and calls ``on_token`` with each piece as it comes.

    ``name`` is reported as the answer's ``backend``; ``context_window`` (tokens) is what the prompt is fitted
    to. A generator may also offer ``count_tokens(text) -> int`` for exact fitting.
    """

    name: str
    context_window: int

    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float, on_token: OnToken | None = None
    ) -> str: ...
