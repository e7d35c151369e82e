"""Grounding for model-written answers: the prompt that goes in, and what comes out made safe to show.

Going in (:func:`build_prompt`):

* the persona is the system prompt; kb's grounding rules come after it and say they win;
* each retrieved chunk is labelled ``[n]`` and fenced as untrusted data between marker lines carrying a random
  per-request boundary; a chunk cannot close its fence (it cannot know the boundary, and ``<<<``, ``>>>`` and
  chat-template tokens in it are broken up); zero-width, bidi-control and Unicode tag characters are stripped
  from everything retrieved;
* chunks are fitted to the model's window in order of relevance; the question is never truncated.

Coming out (:func:`sanitize_output`, :class:`StreamFilter`): images, links, URLs, HTML, echoed fence lines and
control characters are removed. Checking every sentence against its citation is :mod:`kb.answer.verify`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from kb.errors import GeneratorError
from kb.models import Hit
from kb.personas import Persona
from kb.prompts import (
    CANNOT_ANSWER,
    DEFAULT_SYSTEM,
    GROUNDING_RULES,
    LINK_REMOVED,
    PERSONA_SYSTEM,
    SOURCE_BLOCK,
    USER_TEMPLATE,
)

Count = Callable[[str], int]

# Invisible characters that can hide instructions: zero-width, bidi controls, word joiners, BOM, variation
# selectors and the Unicode tag block (U+E0000-E007F, "ASCII smuggling").
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # keeps \t \n \r
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def clean_untrusted(text: str) -> str:
    """``text`` without invisible characters, terminal escapes and control characters (newlines kept)."""
    return _CONTROL.sub("", _INVISIBLE.sub("", _ANSI.sub("", text)))


def estimate_tokens(text: str) -> int:
    """A deliberately high token estimate (about 3 characters a token) for models whose tokenizer kb lacks."""
    return len(text) // 3 + len(text.split()) // 4 + 1


def new_boundary() -> str:
    return "kb-" + secrets.token_hex(12)


# --- the prompt ----------------------------------------------------------------------------------------
@dataclass
class Prompt:
    messages: list[dict[str, str]]
    boundary: str
    context: dict[int, Hit]  # [n] -> the chunk (its text cleaned) as it was shown to the model
    dropped: int = 0  # retrieved chunks that did not fit the window
    question: str = ""


def persona_prompt(persona: Persona | None) -> str:
    if persona is None:
        return DEFAULT_SYSTEM
    principles = "\n".join(f"- {p}" for p in persona.principles[:6]) or "- Be accurate and specific."
    return PERSONA_SYSTEM.format(
        title=persona.title,
        domain=f" Your domain: {persona.domain}." if persona.domain else "",
        personality=f"\n{persona.personality}." if persona.personality else "",
        principles=principles,
    )


def _location(hit: Hit) -> str:
    loc = f"{hit.path} lines {hit.start_line}-{hit.end_line}"
    return f"{loc} › {hit.heading}" if hit.heading else loc


_TEMPLATE_TOKEN = re.compile(r"<\|([^|<>\s]{1,40})\|>|\[(/?INST)\]|<<(/?SYS)>>|<(/?s)>", re.I)


def _fenced(text: str) -> str:
    """A chunk as it goes inside its fence: it keeps its words but can form neither a marker line (``<<<``,
    ``>>>``) nor a chat-template token (``<|im_start|>``, ``[INST]``, ``<<SYS>>``, ``</s>``)."""
    text = _TEMPLATE_TOKEN.sub(lambda m: "< " + next(g for g in m.groups() if g) + " >", text)
    return text.replace("<<<", "<< <").replace(">>>", "> >>")


def build_prompt(
    question: str,
    hits: Sequence[Hit],
    persona: Persona | None,
    *,
    context_window: int,
    max_answer_tokens: int,
    count: Count = estimate_tokens,
    boundary: str | None = None,
) -> Prompt:
    """Chat messages for ``question`` over ``hits`` (most relevant first), fitted to ``context_window``."""
    question = " ".join(clean_untrusted(question).split())
    cleaned = [replace(h, text=clean_untrusted(h.text), heading=clean_untrusted(h.heading)) for h in hits]
    boundary = boundary or new_boundary()
    while any(boundary in h.text or boundary in h.path for h in cleaned):  # cannot happen by chance; cheap
        boundary = new_boundary()
    system = (
        clean_untrusted(persona_prompt(persona))
        + "\n\n"
        + GROUNDING_RULES.format(boundary=boundary, cannot_answer=CANNOT_ANSWER)
    )
    fixed = count(system) + count(
        USER_TEMPLATE.format(sources="", question=question, cannot_answer=CANNOT_ANSWER)
    )
    budget = context_window - max_answer_tokens - fixed - 32  # 32: the chat template's own tokens
    if budget < 0:
        raise GeneratorError(
            f"The question and kb's instructions take about {fixed} tokens, more than the model's window of "
            f"{context_window} leaves after {max_answer_tokens} for the answer. Ask a shorter "
            "question, or set "
            "llm_context_window (or a lower llm_max_tokens) in kb.toml."
        )
    blocks: list[str] = []
    context: dict[int, Hit] = {}
    dropped = 0
    for hit in cleaned:
        n = len(context) + 1
        location = _fenced(_location(hit))
        kind = "resource" if hit.source_type == "resource" else "team"
        block = SOURCE_BLOCK.format(
            n=n, boundary=boundary, kind=kind, location=location, text=_fenced(hit.text)
        )
        cost = count(block) + 2
        if cost > budget and not context:  # the most relevant chunk alone is too long: keep its beginning
            text = hit.text
            while text and cost > budget:
                text = text[: int(len(text) * budget / cost * 0.9)]
                block = SOURCE_BLOCK.format(
                    n=n, boundary=boundary, kind=kind, location=location, text=_fenced(text)
                )
                cost = count(block) + 2
            if not text:
                dropped += 1
                continue
            lines = text.count("\n")
            hit = replace(hit, text=text, end_line=hit.start_line + lines)
        elif cost > budget:
            dropped += 1
            continue
        budget -= cost
        blocks.append(block)
        context[n] = hit
    user = USER_TEMPLATE.format(sources="\n\n".join(blocks), question=question, cannot_answer=CANNOT_ANSWER)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return Prompt(messages, boundary, context, dropped, question)


# --- what comes out ------------------------------------------------------------------------------------
_IMAGE = re.compile(r"!\[[^\]\n]*\]\s*(?:\([^)\n]*\)|\[[^\]\n]*\])")
_LINK = re.compile(r"\[([^\]\n]+)\]\(\s*[^)\n]*\)")
_REF_DEF = re.compile(r"^\s*\[[^\]\n]+\]:\s*\S+.*$", re.M)
_HTML = re.compile(r"<!--.*?(?:-->|$)|</?[a-zA-Z][^>\n]*>?", re.S)
_URL = re.compile(
    r"(?:\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://|\bwww\.|\bdata:[a-z]+/|\bmailto:|\bjavascript:)[^\s<>\"')\]]*"
    r"|\b(?:[a-zA-Z0-9-]+\.)+(?:com|net|org|io|dev|app|xyz|ru|cn|info|biz|co|me|site|online|"
    r"top)(?:/[^\s<>\"')\]]*)?",
)
_FENCE_ECHO = re.compile(r"^.*(?:<<<|>>>|BEGIN SOURCE|END SOURCE).*$", re.M)


def sanitize_output(text: str, boundary: str = "") -> str:
    """Model output with no image, link, URL, HTML, fence marker or invisible/control character left."""
    text = clean_untrusted(text)
    if boundary:
        text = text.replace(boundary, "")
    text = _FENCE_ECHO.sub("", text)
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_DEF.sub("", text)
    text = _HTML.sub("", text)
    return _URL.sub(LINK_REMOVED, text)


class StreamFilter:
    """Makes streamed tokens safe to show: whole words only, URLs and control characters removed."""

    def __init__(self) -> None:
        self._pending = ""
        self.started = False

    def feed(self, piece: str) -> str:
        self._pending += clean_untrusted(piece)
        cut = max(self._pending.rfind(" "), self._pending.rfind("\n"))
        if cut < 0:
            return ""
        ready, self._pending = self._pending[: cut + 1], self._pending[cut + 1 :]
        return _safe_words(ready)

    def close(self) -> str:
        ready, self._pending = self._pending, ""
        return _safe_words(ready)


def _safe_words(text: str) -> str:
    text = _IMAGE.sub("", text)
    return _URL.sub(LINK_REMOVED, _HTML.sub("", text))
