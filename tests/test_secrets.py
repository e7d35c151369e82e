"""ingest.secrets: recall on a labelled set of credential kinds, false positives on real documentation and
ordinary prose/code, line-exact redaction, and bounded cost on hostile text.

The labelled set (``tests/data/secrets/labelled.jsonl``) holds templates, not credentials: each line is
``{"kind", "before", "secret", "after"}`` and ``{gen:N}`` fields in ``secret`` are filled with random
characters from a seeded generator when the test runs (``alnum``, ``alpha``, ``hex``, ``upper`` = A-Z0-9,
``lowalnum``, ``digits``, ``base32``, ``bech32``, ``b64``, ``b64url``, ``pw`` = a password with digits and
symbols, ``uuid``, ``basic`` = base64 of ``user:password``, ``discordid`` = base64 of an 18-digit id). Nothing
shaped like a real credential is committed, and the fakes follow each provider's format.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import time
from pathlib import Path

import pytest

from ingest.secrets import KINDS, Finding, SecretScanLimit, find_secrets, parse_allow_list, redact

DATA = Path(__file__).parent / "data" / "secrets" / "labelled.jsonl"
RESOURCES = Path(__file__).resolve().parents[2] / "shared" / "resources"

_ALPHABETS = {
    "alnum": string.ascii_letters + string.digits,
    "alpha": string.ascii_letters,
    "hex": "0123456789abcdef",
    "upper": string.ascii_uppercase + string.digits,
    "lowalnum": string.ascii_lowercase + string.digits,
    "digits": string.digits,
    "base32": string.ascii_uppercase + "234567",
    "bech32": "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L",
    "b64": string.ascii_letters + string.digits + "+/",
    "b64url": string.ascii_letters + string.digits + "-_",
}
_FIELD = re.compile(
    r"\{(alnum|alpha|hex|upper|lowalnum|digits|base32|bech32|b64|b64url|pw|uuid|basic|discordid)(?::(\d+))?\}"
)


def _fill(template: str, rng: random.Random) -> str:
    def one(match: re.Match[str]) -> str:
        gen, size = match.group(1), int(match.group(2) or 0)
        if gen in _ALPHABETS:
            return "".join(rng.choice(_ALPHABETS[gen]) for _ in range(size))
        if gen == "pw":
            chars = [rng.choice(string.ascii_letters + string.digits + "!%^*-_+.@") for _ in range(size - 2)]
            return "".join(chars) + rng.choice(string.digits) + rng.choice("!%^*")
        if gen == "uuid":
            h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if gen == "basic":
            raw = "deploy:" + "".join(rng.choice(_ALPHABETS["alnum"]) for _ in range(16))
            return base64.b64encode(raw.encode()).decode()
        user_id = str(rng.randrange(10**17, 10**18))  # discordid
        return base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")

    return _FIELD.sub(one, template)


def labelled_samples() -> list[dict[str, str]]:
    rng = random.Random(14)
    samples = []
    for raw in DATA.read_text().splitlines():
        item = json.loads(raw)
        item["secret"] = _fill(item["secret"], rng)
        samples.append(item)
    return samples


SAMPLES = labelled_samples()


def _lines(text: str) -> list[str]:
    return re.split(r"\r\n|\n|\r", text)  # as the chunker numbers lines


# --- recall -----------------------------------------------------------------------------------------------


def test_labelled_set_covers_at_least_30_kinds() -> None:
    kinds = {s["kind"] for s in SAMPLES}
    assert len(kinds) >= 30
    assert kinds <= set(KINDS)
    print(f"labelled set: {len(SAMPLES)} samples, {len(kinds)} kinds (the scanner knows {len(KINDS)})")


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"{i:02d}-{s['kind']}" for i, s in enumerate(SAMPLES)])
def test_each_labelled_secret_is_found_and_redacted(sample: dict[str, str]) -> None:
    head = "# Deploy notes\n\nThe values below were pasted from the vault.\n"
    line = sample["before"] + sample["secret"] + sample["after"]
    text = head + line + "\nAfter the secret: this line keeps its number.\n"
    s0 = len(head) + len(sample["before"])
    s1 = s0 + len(sample["secret"])

    out, findings = redact(text)

    assert [f.kind for f in findings] == [sample["kind"]], findings
    f = findings[0]
    assert f.start <= s0 and f.end >= s1, "the whole secret is covered"
    first = 4 + sample["before"].count("\n")
    assert f.line == first and f.end_line == first + sample["secret"].count("\n")
    assert f"[secret: {sample['kind']}]" in out
    for part in _lines(sample["secret"]):
        assert len(part.strip()) < 8 or part.strip() not in out, "no line of the secret survives"
    before, after = _lines(text), _lines(out)
    assert len(after) == len(before), "line count unchanged"
    span = range(f.line - 1, f.end_line)
    unchanged = [x for i, x in enumerate(before) if i not in span]
    assert unchanged == [x for i, x in enumerate(after) if i not in span]


def test_recall_over_the_labelled_set() -> None:
    hits = 0
    misses = []
    for sample in SAMPLES:
        text = sample["before"] + sample["secret"] + sample["after"]
        kinds = [f.kind for f in find_secrets(text)]
        if kinds == [sample["kind"]]:
            hits += 1
        else:
            misses.append((sample["kind"], kinds))
    print(f"recall: {hits}/{len(SAMPLES)} = {hits / len(SAMPLES):.3f}")
    assert not misses


def test_the_issue_notes_file() -> None:
    """Issue 14, item 6: an AWS key, an RSA private key block and ``password: hunter2`` in notes.md."""
    rng = random.Random(6)
    key_id = "AKIA" + "".join(rng.choice(_ALPHABETS["base32"]) for _ in range(16))
    body = "\n".join("".join(rng.choice(_ALPHABETS["b64"]) for _ in range(64)) for _ in range(8))
    block = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    text = (
        "# Notes\n\nProd access for the payments service.\n\n"
        f"- AWS key: {key_id}\n- admin password: hunter2\n\n{block}\n\n## Rotation\n\nRotate every 90 days.\n"
    )
    out, findings = redact(text)
    expected = [("aws-access-key", 5), ("password", 6), ("private-key", 8)]
    assert [(f.kind, f.line) for f in findings] == expected
    assert key_id not in out and "hunter2" not in out and "MII" not in out and body[:64] not in out
    assert _lines(out)[findings[2].line - 1] == "[secret: private-key]"
    assert all(x == "" for x in _lines(out)[8:17])  # the block's other lines are now empty
    assert _lines(out).index("## Rotation") == _lines(text).index("## Rotation")
    assert [f.record("notes.md") for f in findings][1] == {"path": "notes.md", "line": 6, "kind": "password"}


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("postgres://user:pass@db.internal/app", "connection-string-password"),
        ("passwd=Tr0ub4dor&3", "password"),
        ("dbPassword = 'Xk2#9vLq'", "password"),
        ("ftp://ana:s3cr3t@files.internal/in", "url-credentials"),
    ],
)
def test_short_forms(text: str, kind: str) -> None:
    assert [f.kind for f in find_secrets(text)] == [kind]


def test_crlf_and_cr_line_endings_are_kept() -> None:
    body = "\r\n".join(["Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG9mcmVkcGx1Z3h5enp5"] * 3)
    text = f"a\r\n-----BEGIN PRIVATE KEY-----\r\n{body}\r\n-----END PRIVATE KEY-----\rb\n"
    out, findings = redact(text)
    assert findings and findings[0].line == 2
    assert _lines(out) == ["a", "[secret: private-key]", "", "", "", "", "b", ""]


def test_findings_never_hold_the_secret() -> None:
    sample = next(s for s in SAMPLES if s["kind"] == "github-pat")
    (finding,) = find_secrets(sample["secret"])
    assert sample["secret"] not in repr(finding) and sample["secret"] not in json.dumps(finding.record("x"))
    assert isinstance(finding, Finding)


# --- allow-list -------------------------------------------------------------------------------------------


def test_allow_list_exact_and_regex() -> None:
    sample = next(s for s in SAMPLES if s["kind"] == "stripe-secret-key")["secret"]
    text = f"key {sample}\npassword: hunter2\n"
    assert len(find_secrets(text)) == 2
    assert [f.kind for f in find_secrets(text, allow=[sample])] == ["password"]
    assert [f.kind for f in find_secrets(text, allow=[re.compile(r"^hunter\d$")])] == ["stripe-secret-key"]
    assert find_secrets(text, allow=parse_allow_list([sample, "re:^hunter"])) == []
    assert redact(text, allow=[sample, "hunter2"]) == (text, [])


# --- false positives --------------------------------------------------------------------------------------

ORDINARY = [
    "The password must be rotated every 90 days and never shared over chat.",
    "Password: must contain at least 12 characters, one digit and one symbol.",
    "Set password: a strong one, then store it in the vault.",
    "Forgot your password? Use the reset link; the token expires after one hour.",
    "Each API key is scoped to one project. Secret management is described in docs/security.md.",
    "The access token is passed in the Authorization header as a bearer token.",
    "| password | string | The user's password, hashed with argon2 |",
    "password:\n  type: string\n  minLength: 12",
    "password: ${DB_PASSWORD}",
    "password: <your-password>",
    'password: "{{ vault_db_password }}"',
    "PASSWORD=changeme",
    "password: ********",
    "password = getpass.getpass()",
    "login(user=user, password=password)",
    "def check_password(password: str) -> bool:",
    "if password == confirm:",
    "password = self.settings.password",
    "pwd = os.getcwd()",
    "bypass = true",
    'api_key = os.environ["API_KEY"]',
    "secret_key = settings.SECRET_KEY",
    "token = request.headers.get('Authorization')",
    "api_key: YOUR_API_KEY_HERE",
    "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "DATABASE_URL=postgres://user:password@localhost:5432/app",
    "postgres://localhost:5432/app and https://github.com/org/repo",
    "mysql://root:${MYSQL_ROOT_PASSWORD}@db/app",
    "cache_key = 'user-profile-v2-settings'",
    "public_key = AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed the token refresh",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "next_page_token = 'CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA0eXFycDl1cDAQAQ'",
    "The key: value pairs are stored in the manifest.",
    "monkey: 4 bananas; turkey = 2",
    "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJRTES\n"
    "-----END CERTIFICATE-----",
    "Run `ssh-keygen -t ed25519` to create a private key; keep it in ~/.ssh.",
    "export TOKEN=$(gh auth token)",
    "curl -H 'Authorization: Bearer $TOKEN' https://api.github.com/user",
    "The skeleton key, the turkey and the whiskey: unrelated words.",
    "version: 1.2.3-alpha.4, key: 2024-05-01T10:00:00Z",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_prose_and_code_is_not_flagged(text: str) -> None:
    assert find_secrets(text) == []


def test_no_false_positives_on_the_resource_copies() -> None:
    if not RESOURCES.is_dir():
        pytest.skip(f"{RESOURCES} is absent (offline copies of public docs); nothing to measure")
    files = [p for p in sorted(RESOURCES.rglob("*")) if p.is_file()]
    flagged = []
    t0 = time.perf_counter()
    chars = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        chars += len(text)
        for f in find_secrets(text):
            flagged.append(f"{path.relative_to(RESOURCES)}:{f.line} {f.kind}")
    seconds = time.perf_counter() - t0
    print(
        f"false positives over {len(files)} resource files ({chars / 1e6:.2f} M chars, {seconds:.2f} s): "
        f"{len(flagged)}"
    )
    assert flagged == []


# --- cost on hostile text ---------------------------------------------------------------------------------


def _timed(text: str) -> float:
    """CPU seconds to redact ``text``, or to give up on it (SecretScanLimit: the document is not indexed).
    CPU time, not wall time: the cost is the scanner's, whatever else the machine is running."""
    t0 = time.process_time()
    try:
        redact(text)
    except SecretScanLimit:
        print("SecretScanLimit", end=" ")
    return time.process_time() - t0


@pytest.mark.parametrize(
    "unit",
    [
        "eyJ-",  # a JWT prefix chained by a character of its own alphabet
        "key:",  # a context key with no value, over and over
        "password: hunter2 ",  # a password assignment that never ends its line
        "x password=abc;\n",
        "-----BEGIN PRIVATE KEY-----\n",  # BEGIN markers with no END
        "postgres://u:p@h ",
        "ghp_-xoxb-sk-ant-AKIA-AIza-glpat-SG.-hooks.slack.com/services/-dop_v1_-",
        "MMMMMMMMMMMMMMMMMMMMMMMMMM.abcdef.",
        "0123456789:AA",
    ],
)
def test_scanning_10_mb_of_hostile_text_is_bounded(unit: str) -> None:
    text = unit * (10_000_000 // len(unit))
    seconds = _timed(text)
    print(f"{unit[:20]!r} x {len(text) // len(unit)}: {seconds:.2f} s")
    assert seconds < 10.0


def test_a_dump_of_credentials_is_refused_not_half_redacted() -> None:
    rng = random.Random(3)
    lines = ["ghp_" + "".join(rng.choice(_ALPHABETS["alnum"]) for _ in range(36)) for _ in range(10_001)]
    with pytest.raises(SecretScanLimit):
        redact("\n".join(lines))


def test_scanning_is_fast_on_ordinary_text() -> None:
    paragraph = (
        "The payments service retries failed webhooks three times with exponential backoff. Keys are rotated "
        "by the platform team; see the runbook for the token lifetime and the password policy.\n"
    )
    text = paragraph * (5_000_000 // len(paragraph))
    seconds = _timed(text)
    print(f"5 MB of prose: {seconds:.2f} s")
    assert seconds < 5.0
