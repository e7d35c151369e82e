"""Validators behind :mod:`ingest.secret_rules`: what makes a credential-shaped string a credential.

Entropy floors, structure checks (a JWT header that decodes to JSON, a Discord token's numeric id, a
private key block with a base64 body, a Basic auth header that decodes to ``user:password``), and the filters
that keep documentation out: placeholders (``<password>``, ``${DB_PASSWORD}``, ``changeme``) and references to
something else (``os.environ[...]``, ``config.password``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter


def placeholder(kind: str) -> str:
    return f"[secret: {kind}]"


# --- value checks ------------------------------------------------------------------------------------------


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


_PLACEHOLDER = re.compile(
    r"""(?ix)
    example | placeholder | redacted | changeme | change[_-]?me | dummy | sample
    | x{5,} | \*{3,} | \.{3} | •{3,}
    | ^your[_-] | [_-]here$ | ^<.*>$ | ^\[.*]$ | ^\(.*\)$
    | \$\{ | \{\{ | ^\$\( | ^\$[A-Za-z_][A-Za-z0-9_]*$ | ^%[A-Za-z_][A-Za-z0-9_]*%$ | %\(\w+\)s
    | ^@\w+@$ | ^\{\w*}$
    """
)
_NOT_A_PASSWORD = {
    "required",
    "optional",
    "string",
    "str",
    "text",
    "true",
    "false",
    "null",
    "none",
    "nil",
    "yes",
    "no",
    "password",
    "passwd",
    "passphrase",
    "pass",
    "pwd",
    "secret",
    "empty",
    "hidden",
    "masked",
    "unset",
    "default",
    "undefined",
    "bool",
    "boolean",
    "int",
    "integer",
    "number",
    "object",
    "array",
    "bytes",
    "secretstr",
    "env",
    "environ",
    "prompt",
    "random",
    "generated",
    "auto",
    "value",
    "test",
    "foo",
    "bar",
    "baz",
}
_NOT_A_URL_PASSWORD = {"password", "passwd", "pwd", "secret"}  # user:password@ is how docs spell "yours here"


def is_placeholder(value: str, words: set[str] = _NOT_A_PASSWORD) -> bool:
    return bool(_PLACEHOLDER.search(value)) or value.strip("\"'`").lower() in words


def _looks_like_reference(value: str) -> bool:
    """A name for a value rather than the value: ``config.db.password``, ``settings.SECRET``, ``get_token()``,
    ``os.environ["X"]``, ``MY_API_TOKEN``, ``user_password``."""
    return bool(
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+", value)  # dotted name
        or re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", value)  # CONSTANT_NAME
        or re.fullmatch(r"[a-z][a-z0-9]*(?:_[a-z0-9]+){2,}", value)  # snake_case_name
        or re.search(r"[(\[{]", value)
    )


def _has_letters_and_digits(value: str) -> bool:
    return bool(re.search(r"[A-Za-z]", value) and re.search(r"\d", value))


def _b64decode(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def jwt_header_ok(token: str) -> bool:
    raw = _b64decode(token.split(".", 1)[0].rstrip("="))
    if raw is None:
        return False
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict) and bool({"alg", "typ", "enc", "kid"} & set(header))


def discord_id_ok(token: str) -> bool:
    raw = _b64decode(token.split(".", 1)[0])
    return raw is not None and raw.isdigit() and 15 <= len(raw) <= 20


def key_block_has_body(block: str) -> bool:
    body = re.sub(r"-----(?:BEGIN|END)[^-]{0,100}-----", "", block)
    body = body.replace("\\n", "\n")
    return sum(len(run) for run in re.findall(r"[A-Za-z0-9+/=]{16,}", body)) >= 64


def basic_auth_ok(value: str) -> bool:
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    user, sep, password = decoded.partition(":")
    return bool(sep and password and decoded.isprintable() and not is_placeholder(password))


def password_ok(value: str) -> bool:
    bare = value.strip("\"'`")
    if len(bare) < 4 or is_placeholder(bare) or _looks_like_reference(bare):
        return False
    if value[:1] not in "\"'`" and re.fullmatch(r"[A-Za-z_.-]+", bare):
        return False  # an unquoted plain word is a type, a word of prose or a name, not a password
    return not re.fullmatch(r"[\d.]+", bare)  # a number: a length, a version


def url_password_ok(value: str) -> bool:
    return not is_placeholder(value, _NOT_A_URL_PASSWORD)


def generic_ok(value: str) -> bool:
    return (
        _has_letters_and_digits(value)
        and entropy(value) >= 3.5
        and not is_placeholder(value)
        and not _looks_like_reference(value)
        and not re.fullmatch(r"[\d.:-]+", value)  # versions, dates, times
        and not re.fullmatch(r"(?:[a-z]+[-_.]){2,}[a-z0-9]+", value)  # slugs: a-name-v2, org.module.v1
    )


# --- rules -------------------------------------------------------------------------------------------------
#
# Every pattern starts with a literal (``ghp_``, ``xox``, ``://``, ``password`` ...), so ``re`` finds
# candidates with its fast literal search instead of trying every position, and every repetition is possessive
# (``{m,n}+``) so a failed attempt never backtracks. Token bodies are matched as runs and their structure and
# boundaries are checked afterwards, which keeps a hostile document (``eyJ-eyJ-eyJ-...`` over 10 MB) linear.
