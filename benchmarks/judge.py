"""An independent judge for benchmarks/bench_llm.py: is an answer sentence supported by the quote it cites?

It shares no code with kb on purpose: kb's verifier (``kb.answer.verify``) is what bench_llm.py measures, so
the benchmark cannot grade kb with kb's own tokenizer, stop words or stemmer. Standard library only.

Rules, in order (a sentence fails at the first one it breaks):

1. **Numbers match**: every number in the sentence (``1,000`` = ``1000``; decimals kept) is in the quote.
2. **Polarity matches**: a word in the scope of a negation (``not``, ``no``, ``never``, ``none``, ``nor``,
   ``neither``, ``without``, ``cannot``, ``-n't``; the scope runs to the end of the clause) is negated. A
   sentence word that the quote holds only with the other polarity is a contradiction: "the API does not use
   cursor-based pagination" is NOT supported by "the API uses cursor-based pagination", nor the reverse.
3. **Coverage**: at least 60 % of the sentence's content words are in the quote with the same polarity.

tests/test_bench_judge.py checks the judge itself on sentence pairs (the negation case included), so the judge
can fail too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_COVERAGE = 0.6

# Function words only. Negation cues are NOT here: they are markers that flip the words after them.
STOP_WORDS = frozenset(
    """a an the and or but if then than that this these those is are was were be been being am do does did
    doing has have had having of in on at to for from by with as into onto about over under it its we our us
    you your they their them he she his her i me my can could should would will shall may might must so such
    also which who whom whose what when where why how all any each both more most other some only own same
    too very just there here per via up out one""".split()
)
NEGATIONS = frozenset("not no never none nor neither without cannot".split())
# A negation's scope ends at clause punctuation or at a word that starts a new clause.
CLAUSE_BREAKS = frozenset("but however although though while whereas yet instead".split())
_CONTRACTIONS = (
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (re.compile(r"n't\b"), " not"),
)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,;:!?()\n]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass(frozen=True)
class Verdict:
    supported: bool
    coverage: float
    reason: str


def stem(word: str) -> str:
    """A crude suffix stripper, enough to equate "uses"/"use"/"using" and "requests"/"request"."""
    word = word.removesuffix("'s")
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    else:
        if word.endswith(("sses", "shes", "ches", "xes", "zes")):
            word = word[:-2]
        elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def numbers(text: str) -> set[str]:
    out = set()
    for n in _NUMBER.findall(text):
        n = re.sub(r"(?<=\d),(?=\d{3}\b)", "", n)  # thousands separators
        out.add(n.rstrip(".,"))
    return out


def polar_words(text: str) -> set[tuple[str, bool]]:
    """The content words of ``text`` as (stem, negated) pairs."""
    text = text.lower().replace("’", "'")
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text)
    out: set[tuple[str, bool]] = set()
    negated = False
    for tok in _TOKEN.findall(text):
        if not tok[0].isalnum() or tok in CLAUSE_BREAKS:
            negated = False
        elif tok in NEGATIONS:
            negated = True
        elif tok not in STOP_WORDS and not tok.isdigit() and len(tok) > 2:
            out.add((stem(tok), negated))
    return out


def judge(sentence: str, quote: str) -> Verdict:
    """Is ``sentence`` supported by ``quote``? See the module docstring for the three rules."""
    missing = numbers(sentence) - numbers(quote)
    if missing:
        return Verdict(False, 0.0, f"numbers not in the quote: {sorted(missing)}")
    said, have = polar_words(sentence), polar_words(quote)
    if not said:
        return Verdict(False, 0.0, "no content words")
    flipped = sorted(w for w, neg in said if (w, neg) not in have and (w, not neg) in have)
    if flipped:
        return Verdict(False, 0.0, f"polarity contradicts the quote: {flipped}")
    coverage = len(said & have) / len(said)
    if coverage < MIN_COVERAGE:
        return Verdict(False, coverage, f"coverage {coverage:.2f} < {MIN_COVERAGE}")
    return Verdict(True, coverage, "supported")
