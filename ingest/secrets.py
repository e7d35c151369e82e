"""Credentials inside document text: find them, and redact them without moving a single line.

kb indexes ordinary documents, and ordinary documents hold secrets (an AWS key pasted into ``notes.md``, a
private key block in a runbook, ``password: hunter2`` in a setup guide). Whatever is indexed is stored,
embedded, shown by ``kb search`` and quoted by ``kb ask`` - to a terminal today, to an agent and its LLM
provider when kb is served over MCP (OWASP LLM02, sensitive information disclosure). This module is the filter
in front of that. It does not import kb and has no dependency beyond the standard library.

API
---
``redact(text, allow=()) -> tuple[str, list[Finding]]``
    ``text`` with each secret replaced by a typed placeholder, ``[secret: aws-access-key]``, and the findings
    (offsets into the *original* text). Line numbers do not move: a secret spanning several lines (a private
    key block) becomes one placeholder on its first line followed by the same line breaks, now on empty lines,
    so every other line keeps its number and citations stay line-exact.

``find_secrets(text, allow=()) -> list[Finding]``
    The findings alone, in text order, non-overlapping. A :class:`Finding` is ``(line, start, end, kind,
    end_line)``: ``start``/``end`` are character offsets into ``text`` (end exclusive), ``line``/``end_line``
    the 1-based lines they fall on, numbered as kb numbers lines (``\n``, ``\r\n`` and ``\r`` all end a line).
    It never holds the secret itself, so it can be logged; ``Finding.record(path)`` is the report entry
    ``{"path", "line", "kind"}``.

``allow``
    Known false positives. A ``str`` is compared with the matched secret exactly; a compiled ``re.Pattern`` is
    searched in it. :func:`parse_allow_list` turns configuration strings into that form (``"re:<regex>"`` is a
    regex, anything else an exact string).

:class:`SecretScanLimit`
    Raised (by both functions) for a text with more than :data:`MAX_CANDIDATES` credential-shaped strings or
    :data:`MAX_FINDINGS` findings - a dump of secrets, or a document built to make scanning slow. Nothing is
    returned half-redacted: the caller should not index that document ("skipped: <the message>").

``KINDS``
    Every kind a finding can have (60: cloud, code hosting, registries, messaging, payments, AI providers,
    private keys, JWTs, URL and connection-string passwords, HTTP auth headers, passwords, generic API keys).

Intended use by the indexer::

    text, findings = redact(document.text, allow=parse_allow_list(settings.allow))
    report = [f.record(path) for f in findings]  # {"path", "line", "kind"}, never the secret

The rules
---------
The provider-specific patterns follow the gitleaks default ruleset (github.com/gitleaks/gitleaks,
``config/gitleaks.toml``, MIT licence): fixed prefixes (``ghp_``, ``xoxb-``, ``AKIA`` ...), lengths and
alphabets, plus a minimum Shannon entropy per rule so that ``ghp_xxxxxxxx...`` and other placeholders in
documentation are not secrets. Where a format has a checkable structure it is checked (a JWT's header decodes
to JSON with ``alg``/``typ``; a Discord token's first part decodes to a numeric user id; a private key block
has a base64 body; a Basic auth header decodes to ``user:password``). Context rules (``password: ...``,
``api_key = ...``, ``DATADOG_API_KEY=...``) need an assignment - a key, then ``=``, ``:``, ``:=`` or ``=>`` -
and a value that is neither a placeholder (``<password>``, ``${DB_PASSWORD}``, ``{{ vault_pw }}``, ``****``,
``changeme``) nor a reference to something else (``os.environ[...]``, ``config.password``,
``get_password()``), so "the password must be rotated" in prose is not a finding. Values containing
``EXAMPLE`` (the AWS documentation key ``AKIAIOSFODNN7EXAMPLE``) are documentation, not credentials.
detect-secrets (1.5.0) was considered and not used: it scans line by line (no multi-line key blocks), reports
values rather than offsets, keeps its configuration in process-global state, and lacks several kinds needed
here (Anthropic, Hugging Face, Google API keys, GCP service-account JSON, Heroku, DigitalOcean, Shopify,
Datadog, connection strings).

Specific rules win over generic ones: an Anthropic key inside ``ANTHROPIC_API_KEY=...`` is an
``anthropic-api-key``, not an ``api-key``. Cost is linear in the text: every pattern starts with a literal, so
``re`` uses its fast literal search, repetitions are bounded and possessive, and token runs are matched whole
and checked afterwards (about 0.1-0.2 s per MB; 10 MB of hostile text in under 3 s).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ingest.secret_checks import entropy, key_block_has_body, placeholder
from ingest.secret_rules import KINDS, NOT_SECRET_KEY, RULES, Rule

__all__ = [
    "KINDS",
    "RULES_VERSION",
    "Finding",
    "SecretScanLimit",
    "find_secrets",
    "parse_allow_list",
    "placeholder",
    "redact",
]

RULES_VERSION = "1"  # bump when a rule changes what is found: indexes are then re-derived (kb.index)

AllowEntry = str | re.Pattern[str]


@dataclass(frozen=True)
class Finding:
    """One credential: where it is and what kind it is - never its value."""

    line: int  # 1-based line of the first character
    start: int  # offset into the scanned text
    end: int  # offset one past the last character
    kind: str
    end_line: int = 0  # 1-based line of the last character (same as ``line`` unless the secret spans lines)

    def record(self, path: str) -> dict[str, object]:
        """The report entry for ``kb index``: ``{"path", "line", "kind"}``."""
        return {"path": path, "line": self.line, "kind": self.kind}


# --- scanning ----------------------------------------------------------------------------------------------


def parse_allow_list(entries: Iterable[str]) -> list[AllowEntry]:
    """Configuration strings -> allow-list entries: ``"re:<regex>"`` is a regex searched in the secret,
    anything else an exact secret."""
    return [re.compile(e[3:]) if e.startswith("re:") else e for e in entries]


def _allowed(value: str, allow: list[AllowEntry]) -> bool:
    for entry in allow:
        if isinstance(entry, str):
            if value == entry:
                return True
        elif entry.search(value):
            return True
    return False


def _secret_span(match: re.Match[str]) -> tuple[int, int]:
    groups = match.re.groupindex
    for group in ("s", "dq", "sq", "bq", "bare"):
        if group in groups and match.group(group) is not None:
            return match.span(group)
    return match.span()


_IDENT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_SCHEME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-:")


def _run_before(text: str, pos: int, chars: frozenset[str], limit: int) -> int:
    """Start of the run of ``chars`` that ends at ``pos`` (at most ``limit`` long)."""
    i, stop = pos, max(0, pos - limit)
    while i > stop and text[i - 1] in chars:
        i -= 1
    return i


def _key_name(text: str, key_start: int) -> str:
    """The whole identifier around a key, e.g. ``DB_PUBLIC_KEY`` for a match of ``key``."""
    i, j = _run_before(text, key_start, _IDENT, 60), key_start
    while j < len(text) and j - key_start < 60 and text[j] in _IDENT:
        j += 1
    return text[i:j]


class SecretScanLimit(ValueError):
    """The text holds more credential-shaped strings than kb examines (a dump of secrets, or a document built
    to make scanning slow). Nothing was redacted: treat the document as one not to index."""


MAX_CANDIDATES = 100_000  # credential-shaped matches examined per text (each costs a few microseconds)
MAX_FINDINGS = 10_000


_BEGIN = re.compile(r"-----BEGIN[ A-Z0-9_-]{0,100}?PRIVATE KEY(?: BLOCK)?-----")
_END_MARK = re.compile(r"-----END[ A-Z0-9_-]{0,100}?PRIVATE KEY(?: BLOCK)?-----")
_KEY_LINES = re.compile(
    r"(?:(?:\r\n|\r|\n)[ \t>]{0,40}+(?:[A-Za-z0-9+/=]{16,200}+|(?:Proc-Type|DEK-Info|Comment|Version): "
    r"[^\r\n]{0,200}+)[ \t]{0,40}+(?=\r|\n|\Z))*+"
)
_MAX_KEY_BLOCK = 20_000


def _private_keys(text: str) -> list[tuple[int, int]]:
    """Private key blocks: BEGIN to the first END within 20,000 characters, or, with no END, BEGIN and the
    base64 lines that follow it. Linear: END markers are found once, and a rejected block is not rescanned."""
    begins = list(itertools.islice(_BEGIN.finditer(text), MAX_CANDIDATES + 1))
    if not begins:
        return []
    if len(begins) > MAX_CANDIDATES:
        raise SecretScanLimit(f"more than {MAX_CANDIDATES} private key markers")
    ends = list(_END_MARK.finditer(text))
    end_starts = [m.start() for m in ends]
    spans: list[tuple[int, int]] = []
    done = 0
    for begin in begins:
        if begin.start() < done:
            continue
        i = bisect.bisect_left(end_starts, begin.end())
        if i < len(ends) and ends[i].start() - begin.end() <= _MAX_KEY_BLOCK:
            end = ends[i].end()
        else:
            lines = _KEY_LINES.match(text, begin.end())
            end = lines.end() if lines else begin.end()
        done = end
        if end - begin.end() >= 64 and key_block_has_body(text[begin.start() : end]):
            spans.append((begin.start(), end))
    return spans


def _lower(text: str) -> str:
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)  # keep offsets (e.g. "İ")


def find_secrets(text: str, allow: Iterable[AllowEntry] = ()) -> list[Finding]:
    """Every credential in ``text`` as non-overlapping :class:`Finding` s, in text order. Raises
    :class:`SecretScanLimit` past :data:`MAX_CANDIDATES` matches examined or :data:`MAX_FINDINGS` findings."""
    allowed = list(allow)
    lowered = _lower(text)
    candidates: list[tuple[int, int, int, str]] = []  # (rank, start, end, kind)
    examined = 0
    for priority, rule in enumerate(RULES):
        rank = priority + (1000 if rule.generic else 0)
        if rule.kind == "private-key":
            for start, end in _private_keys(text):
                if not (allowed and _allowed(text[start:end], allowed)):
                    candidates.append((rank, start, end, rule.kind))
            continue
        subject = lowered if rule.lowered else text
        for pattern in rule.patterns:
            for match in pattern.finditer(subject):
                examined += 1
                if examined > MAX_CANDIDATES:
                    raise SecretScanLimit(
                        f"more than {MAX_CANDIDATES} credential-shaped strings; not scanned to the end"
                    )
                found = _accept(rule, text, match)
                if found is None:
                    continue
                start, end, kind = found
                if allowed and _allowed(text[start:end], allowed):
                    continue
                candidates.append((rank, start, end, kind))
    return _findings(text, candidates)


def _accept(rule: Rule, text: str, match: re.Match[str]) -> tuple[int, int, str] | None:
    """The secret's span and kind if ``match`` passes the rule's boundary, structure and value checks."""
    start, end = _secret_span(match)
    kind = rule.kind
    if rule.lead is not None:
        lead = rule.lead.search(text, max(0, match.start() - rule.lead_window - 1), match.start())
        if lead is None:
            return None
        start = lead.start()
    if rule.scheme_kinds:
        scheme = text[_run_before(text, match.start(), _SCHEME, 40) : match.start()]
        for pattern, scheme_kind in rule.scheme_kinds:
            if pattern.fullmatch(scheme) or pattern.fullmatch(scheme.rpartition(":")[2]):
                kind = scheme_kind
                break
        else:
            return None
    if rule.left is not None and start > 0 and rule.left.match(text, start - 1):
        return None
    if rule.shape is not None:
        shaped = rule.shape.match(text, start, end)
        if shaped is None or text[shaped.end() : end].strip("."):
            return None
        end = shaped.end()
    if rule.right is not None and rule.right.match(text, end):
        return None
    if rule.key_boundary and match.start() > 0:
        before, first = text[match.start() - 1], text[match.start()]
        camel = first.isupper() and (before.islower() or before.isdigit())  # dbPassword, apiToken
        shouting = first.isupper() and before.isupper()  # PGPASSWORD, MYAPIKEY
        if before.isalnum() and not (camel or shouting):
            return None
    value = text[start:end]
    if rule.min_entropy and entropy(value) < rule.min_entropy:
        return None
    if "example" in value.lower():
        return None  # AWS's documented AKIAIOSFODNN7EXAMPLE and its kin
    if rule.key_filter and NOT_SECRET_KEY.search(_key_name(text, match.start())):
        return None
    if rule.check is not None and not rule.check(value):
        return None
    return start, end, kind


def _findings(text: str, candidates: list[tuple[int, int, int, str]]) -> list[Finding]:
    """Keep the best non-overlapping candidates (specific rules first, then text order) as Findings."""
    if not candidates:
        return []
    taken: list[tuple[int, int, str]] = []
    occupied = bytearray(len(text))
    for _, start, end, kind in sorted(candidates):
        if occupied.find(1, start, end) != -1:
            continue  # overlaps a better finding
        occupied[start:end] = b"\x01" * (end - start)
        taken.append((start, end, kind))
        if len(taken) > MAX_FINDINGS:
            raise SecretScanLimit(f"more than {MAX_FINDINGS} credentials in one text")
    taken.sort()
    breaks = [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
    return [
        Finding(
            line=bisect.bisect_right(breaks, start) + 1,
            start=start,
            end=end,
            kind=kind,
            end_line=bisect.bisect_right(breaks, end - 1) + 1,
        )
        for start, end, kind in taken
    ]


def redact(text: str, allow: Iterable[AllowEntry] = ()) -> tuple[str, list[Finding]]:
    """``text`` with every credential replaced by ``[secret: <kind>]``, and the findings (offsets into the
    original ``text``). The line breaks inside a secret are kept after its placeholder, so the result has the
    same lines, numbered the same, as ``text``."""
    findings = find_secrets(text, allow)
    if not findings:
        return text, []
    out: list[str] = []
    pos = 0
    for f in findings:
        out.append(text[pos : f.start])
        out.append(placeholder(f.kind))
        out.extend(re.findall(r"\r\n|\r|\n", text[f.start : f.end]))
        pos = f.end
    out.append(text[pos:])
    return "".join(out), findings
