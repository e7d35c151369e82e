"""Checking a model's answer against its sources, sentence by sentence (:func:`verify`).

The reply is made safe first (:func:`kb.answer.grounding.sanitize_output`), then split into sentences with the
``[n]`` markers each carries (tolerant of ``[1, 2]``, ``[Source 1]``, ``[^1]``, ...). Ids that were not in the
context are dropped. Each sentence is judged against each chunk it cites: content-word coverage, every number,
negation, and embedding similarity to the chunk's best sentence; a chunk's sentences that address the model
("ignore previous instructions", fake system or tool messages) or carry exfiltration devices are never
evidence. Unsupported sentences are removed (or marked); an uncited sentence is kept only when one chunk
clearly supports it. Each citation is the verbatim supporting sentence with its exact lines. Nothing supported
left: kb's sentinel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from kb.answer.evidence import Embed, StillThere, sentences_of
from kb.answer.grounding import Prompt, sanitize_output
from kb.models import AnswerSentence, Citation, Hit
from kb.prompts import CANNOT_ANSWER, LINK_REMOVED, UNSUPPORTED_MARK

_CITE = re.compile(
    r"(?:\[\^?|【|\((?=\s*(?:sources?|refs?)\b))\s*(?:(?:sources?|chunks?|docs?|documents?|refs?|"
    r"citations?)\s*)?"
    r"[#:]?\s*(\d{1,3}(?:\s*(?:,|;|-|–|and|&)\s*#?\s*\d{1,3})*)\s*(?:\]|】|\))",
    re.I,
)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")
_SENTINEL = re.compile(
    r"found nothing in the knowledge base|(?:sources?|context|"
    r"documents?)\b[^.]{0,40}\b(?:do(?:es)? not|don't|"
    r"doesn't)\b[^.]{0,30}\b(?:answer|say|mention|contain|cover)",
    re.I,
)


def _fragment(text: str) -> bool:
    """A model's line that is no sentence: a short label with no sentence end ("Pagination strategy")."""
    words = re.findall(r"[A-Za-z0-9]+", text)
    return len(words) < 6 and not re.search(r"[.!?][\"')\]*_`]*$", text.strip())


def citation_ids(text: str) -> list[int]:
    ids: list[int] = []
    for m in _CITE.finditer(text):
        for part in re.split(r"\s*(?:,|;|and|&)\s*", m.group(1)):
            bounds = [int(x) for x in re.findall(r"\d+", part)]
            if len(bounds) == 2 and ("-" in part or "–" in part):
                lo, hi = bounds[0], bounds[-1]
                bounds = list(range(lo, hi + 1)) if 0 < hi - lo <= 20 else [lo, hi]
            ids.extend(b for b in bounds if b not in ids)
    return ids


@dataclass
class Claim:
    line: int
    prefix: str
    text: str  # without citation markers
    cited: list[int]
    code: bool = False  # a line of a code block: supported only if the cited chunk has it verbatim


QUOTE_COVERAGE = 0.7  # share of a claim's content words its cited sentence must hold
_CODE_WORD = re.compile(r"[A-Za-z0-9_]{2,}")  # a code line worth showing names something


def split_claims(text: str) -> list[Claim]:
    """The sentences of a reply, each with the ``[n]`` ids it carries (also markers after its full stop)."""
    claims: list[Claim] = []
    in_code = False
    for ln, raw in enumerate(text.splitlines()):
        line = raw.strip()
        if line.startswith(("```", "~~~")):
            in_code = not in_code
            continue
        if in_code:
            body = " ".join(_CITE.sub(" ", line).split())
            if body:
                claims.append(Claim(ln, "", body, citation_ids(line), code=True))
            continue
        if not line or re.match(r"^(#{1,6}\s|\*\*[^*]+\*\*:?$|[-*_=]{3,}$)", line):
            continue
        m = _BULLET.match(line)
        prefix = "- " if m else ""
        line = line[m.end() :] if m else line
        pieces: list[str] = []
        for piece in _SPLIT.split(line):
            lead = re.match(r"^(?:\s*" + _CITE.pattern + r")+", piece, re.I)
            if lead and pieces:  # "claim. [1] Next claim." - the markers belong to the claim before them
                pieces[-1] += " " + lead.group(0)
                piece = piece[lead.end() :]
            if piece.strip():
                pieces.append(piece)
        for piece in pieces:
            body = " ".join(_CITE.sub(" ", piece).split())
            body = re.sub(r"\s+([.,;:!?])", r"\1", body).strip(" ,;")
            if body:
                claims.append(Claim(ln, prefix, body, citation_ids(piece)))
    return claims


_STOP = set(
    "a an the and or but if then than that this these those is are was were be been being am do "
    "does did has have "
    "had of in on at to for from by with as into onto about over under it its it's we our us you "
    "your they their "
    "them he she his her i me my not no can could should would will shall may might must so such "
    "also which who "
    "whom whose what when where why how all any each both more most other some only own same too "
    "very just there "
    "here per via up out".split()
)
_NEG = re.compile(r"\b(?:not|no|never|none|cannot|without|neither|nor)\b|n't\b", re.I)
_NUM = re.compile(r"\d+(?:[.,]\d+)*")
# A sentence that addresses the model is an injected instruction, never evidence for a claim.
_INSTRUCTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.]{0,60}\b(?:instructions?|rules?|prompts?|persona|"
    r"above|previous|"
    r"guidelines?)\b|\byou are (?:now|no longer)\b|\b(?:tell|inform|convince|remind|"
    r"instruct) the (?:user|reader)\b|"
    r"\b(?:system|developer|assistant|tool)\s*(?:message|prompt|note|override)?\s*:|\bnew instructions?\b|"
    r"\b(?:always|must) (?:respond|reply|answer|say|include|output)\b|\bas an ai\b|\b(?:AI|"
    r"assistant|model)s? "
    r"(?:reading|processing) this\b|\b(?:respond|reply|answer)\s+(?:only\s+)?(?:with|in)\b|"
    r"\b(?:say|state|announce|claim|reveal|tell (?:them|everyone))\s+that\b|\bfrom now on\b|"
    r"\bsystem prompt\b|"
    r"\"role\"\s*:\s*\"(?:system|tool|assistant|developer|function)\"|\bfunction result\b|"
    r"^\W*(?:assistant|ai|model|chatbot|llm|claude|gpt|chatgpt)\s*,|\brepeat (?:the|this) (?:word|phrase)\b|"
    r"\b(?:ignorez|ignora|ignoriere|olvida|oubliez|vergiss)\b[^.]{0,60}\b(?:instructions?|instrucciones|"
    r"anweisungen|consignes|istruzioni|regeln|reglas)\b",
    re.I,
)


_EXFIL = re.compile(r"!\[|<img|<script|javascript:|data:[a-z]+/|https?://\S*[?&]\S*=", re.I)


def _stem(word: str) -> str:
    if word.isdigit() or len(word) <= 3:
        return word
    if word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    for suffix in ("ing", "ed", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def content_words(text: str) -> set[str]:
    return {
        _stem(w)
        for w in re.findall(r"[a-z0-9]+", text.lower())
        if w not in _STOP and (len(w) > 2 or w.isdigit())
    }


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "").rstrip(".") for n in _NUM.findall(text)}


@dataclass
class Support:
    supported: bool
    lexical: float = 0.0
    similarity: float = 0.0
    sentence: tuple[int, int, str] | None = None  # (start_line, end_line, quote) in the chunk


@dataclass
class Verified:
    text: str
    sentences: list[AnswerSentence]
    citations: list[Citation]
    abstained: bool
    said_cannot_answer: bool = False
    checks: list[Support] = field(default_factory=list)


def judge_code(line: str, chunk: Hit) -> Support:
    """A code line is supported only when the chunk holds it verbatim (whitespace aside)."""
    flat = " ".join(line.split())
    for i, raw in enumerate(chunk.text.splitlines()):
        if flat and flat == " ".join(raw.split()) and not _INSTRUCTION.search(flat):
            return Support(True, 1.0, 1.0, (chunk.start_line + i, chunk.start_line + i, flat))
    return Support(False)


def judge(
    claim: str, chunk: Hit, pool: list[tuple[int, int, str]], sims: np.ndarray, strict: bool = False
) -> Support:
    """Does ``chunk`` support ``claim``? ``pool``: the chunk's sentences; ``sims``: their similarity to it."""
    claim = claim.replace(LINK_REMOVED, " ")
    words = content_words(claim)
    if not words or not pool:
        return Support(False)
    parts = [p for line in chunk.text.splitlines() for p in _SPLIT.split(line)]
    chunk_text = " ".join(
        [chunk.heading, *(p for p in parts if not _INSTRUCTION.search(p) and not _EXFIL.search(p))]
    )
    lexical = len(words & content_words(chunk_text)) / len(words)
    own = [len(words & content_words(q)) / len(words) for _, _, q in pool]
    best = int(np.argmax(np.asarray(sims) + 0.5 * np.asarray(own)))
    similarity = float(sims[best])
    start, end, quote = pool[best]
    numbers_ok = _numbers(claim) <= _numbers(quote)
    negation_ok = bool(_NEG.search(claim)) == bool(_NEG.search(quote)) or lexical >= 0.95
    evidence = not _INSTRUCTION.search(quote) and not _INSTRUCTION.search(claim)
    missing = len(words) - round(lexical * len(words))  # content words the chunk does not have
    if strict:  # no citation from the model: kb attributes the sentence only on clear support
        strong = (lexical >= 0.7 and similarity >= 0.7) or (lexical >= 0.9 and similarity >= 0.55)
    else:
        strong = similarity >= 0.5 and (
            lexical >= 0.75
            or (lexical >= 0.6 and similarity >= 0.7)
            or (lexical >= 0.4 and similarity >= 0.85)
        )
    # The quote kb shows must hold the claim, not just the chunk around it: an uncited SmolLM2 sentence that
    # borrowed words from three sentences of a chunk (lexical 0.73-0.80) was shown citing one that had half of
    # them. Chosen with benchmarks/tune_verify.py on questions 13-37 of sample-workspace.jsonl (bench_llm
    # reports 1-12): of the sentences kb would keep, 36 of 38 were independently supported at 0.6, 35 of 35 at
    # 0.7 (kb's word count runs a little above the judge's stemmed one).
    strong = strong and own[best] >= QUOTE_COVERAGE
    if len(words) <= 4:  # a short claim: one new word can be the whole claim ("X is deprecated")
        strong = strong and (missing == 0 or similarity >= 0.85) and (len(words) > 1 or similarity >= 0.8)
    return Support(
        numbers_ok and negation_ok and evidence and strong, lexical, similarity, (start, end, quote)
    )


def _pool(hit: Hit) -> list[tuple[int, int, str]]:
    """The chunk's sentences that can be evidence: never an instruction to the model, nor an exfiltration."""
    pool = [(s.start_line, s.end_line, s.text) for s in sentences_of(hit)]
    pool = pool or [(hit.start_line, hit.end_line, " ".join(hit.text.split()))]
    return [p for p in pool if not _INSTRUCTION.search(p[2]) and not _EXFIL.search(p[2])]


def verify(
    raw: str,
    prompt: Prompt,
    embed: Embed,
    *,
    mode: str = "remove",
    attribute: bool = True,
    still_there: StillThere | None = None,
) -> Verified:
    """Check a model's reply against the context it was given (see the module docstring). ``still_there``:
    whether a quote is still at its lines of the file (a source changed since it was indexed); a quote that is
    not is no support.

    A sentence citing a chunk that does not support it is unsupported. A sentence with no valid citation
    (none, or only ids that were never in the context) is given the chunk that supports it when ``attribute``
    and one does by a stricter bar; otherwise it is unsupported too.
    """
    claims = split_claims(sanitize_output(raw, prompt.boundary))
    said_cannot = any(_SENTINEL.search(c.text) for c in claims)
    seen: set[str] = set()
    unique = []
    for c in claims:  # small models repeat themselves; echo the prompt's "from:" lines; announce with "...:"
        gist = " ".join(content_words(c.text)) or c.text
        if (
            _SENTINEL.search(c.text)
            or c.text.lower().startswith("from:")
            or c.text.endswith(":")
            or (not c.code and _fragment(c.text))
            or (c.code and not _CODE_WORD.search(c.text))  # "});" says nothing a reader can check
            or gist in seen
        ):
            continue
        seen.add(gist)
        unique.append(c)
    claims = unique
    for c in claims:
        c.cited = [i for i in c.cited if i in prompt.context]  # ids that were never in the context: dropped
    wanted = {i for c in claims for i in c.cited}
    if attribute and any(not c.cited for c in claims):
        wanted = set(prompt.context)
    pools = {n: _pool(prompt.context[n]) for n in sorted(wanted)}
    offsets, at = {}, 0
    for n in pools:
        offsets[n] = at
        at += len(pools[n])
    texts = [c.text for c in claims] + [q for n in pools for _, _, q in pools[n]]
    vectors = embed(texts) if claims and pools else np.zeros((len(texts), 1))
    pool_vec = vectors[len(claims) :]

    citations: list[Citation] = []
    cite_id: dict[tuple[str, int, int], int] = {}
    out_lines: dict[int, list[str]] = {}
    prefixes: dict[int, str] = {}
    sentences: list[AnswerSentence] = []
    checks: list[Support] = []
    for ci, claim in enumerate(claims):
        candidates = claim.cited or (list(pools) if attribute else [])
        judged = []
        for n in candidates:
            if claim.code:
                support = judge_code(claim.text, prompt.context[n])
            else:
                sims = pool_vec[offsets[n] : offsets[n] + len(pools[n])] @ vectors[ci]
                support = judge(claim.text, prompt.context[n], pools[n], sims, strict=not claim.cited)
            if support.sentence and still_there is not None:
                hit = prompt.context[n]
                if not still_there(hit.path, support.sentence[0], support.sentence[1], support.sentence[2]):
                    support = Support(False, support.lexical, support.similarity, support.sentence)
            checks.append(support)
            if support.supported and support.sentence:
                judged.append((support.lexical + support.similarity, n, support))
        if not claim.cited:  # kb attributes an uncited sentence to the one chunk that supports it best
            judged = sorted(judged, key=lambda j: j[0], reverse=True)[:1]
        kept: list[int] = []
        for _, n, support in judged:
            hit = prompt.context[n]
            start, end, quote = support.sentence  # type: ignore[misc]
            key = (hit.path, start, end)
            if key not in cite_id:
                cite_id[key] = len(citations) + 1
                citations.append(
                    Citation(
                        cite_id[key],
                        hit.path,
                        start,
                        end,
                        hit.heading,
                        quote,
                        round(support.similarity, 4),
                        hit.url,
                    )
                )
            if cite_id[key] not in kept:
                kept.append(cite_id[key])
        sentences.append(AnswerSentence(claim.text, kept, bool(kept)))
        if kept:
            shown = f"`{claim.text}`" if claim.code else claim.text
            rendered = shown + " " + "".join(f"[{i}]" for i in kept)
        elif mode == "mark":
            rendered = f"{claim.text} {UNSUPPORTED_MARK}"
        else:
            continue
        out_lines.setdefault(claim.line, []).append(rendered)
        prefixes[claim.line] = claim.prefix
    if not any(s.supported for s in sentences):
        return Verified(CANNOT_ANSWER, sentences, [], True, said_cannot, checks)
    text = "\n".join(prefixes[ln] + " ".join(parts) for ln, parts in sorted(out_lines.items()))
    return Verified(text, sentences, citations, False, said_cannot, checks)
