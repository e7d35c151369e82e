"""The credential rules behind :mod:`ingest.secrets`: one :class:`Rule` per kind, with the validators that
keep documentation placeholders out (entropy floors, structure checks, placeholder and reference filters).

The provider-specific patterns follow the gitleaks default ruleset (github.com/gitleaks/gitleaks,
``config/gitleaks.toml``, MIT licence); see :mod:`ingest.secrets` for how they are applied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ingest.secret_checks import (
    basic_auth_ok,
    discord_id_ok,
    generic_ok,
    is_placeholder,
    jwt_header_ok,
    key_block_has_body,
    password_ok,
    url_password_ok,
)


@dataclass(frozen=True)
class Rule:
    kind: str
    patterns: tuple[re.Pattern[str], ...]
    lowered: bool = False  # matched on the lowercased text: case-insensitive keys (the value keeps its case)
    lead: re.Pattern[str] | None = None  # must match the text just before the match, ending there (``\Z``)
    lead_window: int = 0  # how far back the lead may start (its longest match)
    left: re.Pattern[str] | None = None  # must not match the character before the secret
    right: re.Pattern[str] | None = None  # must not match the character after the secret (the token goes on)
    shape: re.Pattern[str] | None = None  # the secret must start with this; only "." may follow it in the run
    min_entropy: float = 0.0
    check: Callable[[str], bool] | None = None
    generic: bool = False  # context rules: they yield to any specific finding they overlap
    key_boundary: bool = False  # context rules: the key starts a word (or a camelCase part)
    key_filter: bool = False  # context rules: reject keys named like non-secrets (public_key, cache_key ...)
    scheme_kinds: tuple[tuple[re.Pattern[str], str], ...] = ()  # URL rules: the kind follows the scheme


_WORD_LEFT = re.compile(r"[A-Za-z0-9_]")
_TOKEN_RIGHT = re.compile(r"[A-Za-z0-9_-]")
_B64_RIGHT = re.compile(r"[A-Za-z0-9+/=_-]")


def _token(
    kind: str,
    regex: str,
    min_entropy: float = 3.0,
    check: Callable[[str], bool] | None = None,
    right: re.Pattern[str] | None = _TOKEN_RIGHT,
    left: re.Pattern[str] | None = _WORD_LEFT,
    lead: str | None = None,
    lead_window: int = 0,
    shape: str | None = None,
) -> Rule:
    """A token with a recognisable prefix: ``regex`` starts with that prefix (or with what follows ``lead``,
    a regex ending in ``\Z`` for the token's first characters, at most ``lead_window`` of them)."""
    return Rule(
        kind,
        (re.compile(regex),),
        lead=re.compile(lead) if lead else None,
        lead_window=lead_window,
        left=left,
        right=right,
        shape=re.compile(shape) if shape else None,
        min_entropy=min_entropy,
        check=check,
    )


_SEP = r"""["']?[ \t]{0,3}+(?:=|:=|:|=>|\|\|=)[ \t]{0,5}+"""  # after a key: quote, then = : := => ||=


def _context(
    kind: str,
    keys: Iterable[str],
    value: str,
    min_entropy: float = 0.0,
    check: Callable[[str], bool] | None = None,
) -> Rule:
    """``<key...> <assignment> <value>``: a key starting with one of ``keys`` (lowercase regexes, each
    starting with a literal), an assignment, then the secret (group ``s``), quoted or not."""
    patterns = tuple(
        re.compile(rf"{key}[\w.-]{{0,20}}?{_SEP}[\"'`]?(?P<s>{value})(?![A-Za-z0-9+/=_-])") for key in keys
    )
    return Rule(kind, patterns, lowered=True, min_entropy=min_entropy, check=check, key_boundary=True)


_SCHEMES_DB = (
    r"postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|oracle|cockroachdb"
    r"|clickhouse|couchdb|neo4j(?:\+s)?|bolt|nats|kafka|memcached|ldaps?|smtps?|imaps?|pop3s?|jdbc:[a-z]{2,20}"
    r"|[a-z]{2,20}\+(?:psycopg2?|asyncpg|pymysql|mysqldb|aiomysql|pg8000)"
)
_SCHEMES_URL = r"https?|ftps?|sftp|ssh|git|wss?|svn|rsync|s3"
_URL_USERINFO = r"://[^\s:@/?#'\"<>]{0,100}+:(?P<s>[^\s@/?#'\"<>]{1,200}+)@(?=[^\s@/]{1,255})"

RULES: tuple[Rule, ...] = (
    # Structured multi-line secrets first: they contain what the single-token rules would match piecemeal.
    Rule(
        "gcp-service-account-key",
        (
            re.compile(
                r'"private_key"\s{0,5}+:\s{0,5}+"(?P<s>-----BEGIN[ A-Z]{0,30}?PRIVATE KEY-----'
                r'[A-Za-z0-9+/=\\\s]{64,12000}+-----END[ A-Z]{0,30}?PRIVATE KEY-----(?:\\n)?)"'
            ),
        ),
        check=lambda v: key_block_has_body(v),
    ),
    Rule("private-key", ()),  # found by _private_keys (BEGIN ... END, or BEGIN and its base64 lines)
    _token(
        "putty-private-key",
        r"PuTTY-User-Key-File-\d: [^\r\n]{1,200}+(?:\r\n|\r|\n)(?:[^\r\n]{0,200}+"
        r"(?:\r\n|\r|\n)){1,200}?Private-MAC: [0-9a-f]{40,64}+",
        0.0,
        right=None,
    ),
    _token("age-secret-key", r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}+"),
    # Cloud providers.
    _token(
        "aws-access-key", r"A(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z0-9]{16}+", right=re.compile(r"[A-Za-z0-9]")
    ),
    _context(
        "aws-secret-key",
        [r"aws[\w.-]{0,20}?(?:secret|private)[\w.-]{0,10}?key", r"secret[_.-]?access[_.-]?key"],
        r"[A-Za-z0-9/+]{40}+",
        4.0,
    ),
    _context(
        "aws-session-token",
        [r"aws[_.-]?session[_.-]?token", r"security[_.-]?token"],
        r"[A-Za-z0-9/+=]{100,2000}+",
        4.0,
    ),
    _token("google-api-key", r"AIza[\w-]{35}+", 3.5),
    _token("google-oauth-client-secret", r"GOCSPX-[\w-]{28}+"),
    _token("google-oauth-token", r"ya29\.[\w-]{30,2000}+", 3.5),
    _token(
        "azure-storage-key",
        r"AccountKey\s{0,3}+=\s{0,3}+(?P<s>[A-Za-z0-9+/]{86}==)",
        4.0,
        right=_B64_RIGHT,
        left=None,
    ),
    _context(
        "azure-storage-key",
        [r"azure[\w.-]{0,30}?key", r"storage[\w.-]{0,30}?key", r"account[_.-]?key"],
        r"[A-Za-z0-9+/]{86}==",
        4.0,
    ),
    _token(
        "azure-client-secret",
        r"Q~[a-zA-Z0-9_~.-]{31,34}+",
        right=re.compile(r"[^\\'\"`\s<),]"),
        left=re.compile(r"[^\\'\"`\s>=:(,)]"),
        lead=r"[a-zA-Z0-9_~.]{3}\d\Z",
        lead_window=4,
    ),
    _token("alibaba-access-key", r"LTAI[A-Za-z0-9]{20}+"),
    _token("digitalocean-token", r"do[opr]_v1_[a-f0-9]{64}+"),
    _token("heroku-api-key", r"HRKU-AA[0-9a-zA-Z_-]{58}+", 4.0),
    _context(
        "heroku-api-key",
        [r"heroku[\w.-]{0,20}?(?:key|token|secret)"],
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ),
    _token("databricks-token", r"dapi[a-f0-9]{32}+(?:-\d)?"),
    _token("vault-token", r"hv[sb]\.[\w-]{24,200}+", 3.5),
    _token(
        "terraform-cloud-token",
        r"\.atlasv1\.[a-z0-9_=-]{60,70}+",
        3.5,
        lead=r"[a-z0-9]{14}\Z",
        lead_window=14,
    ),
    # Code hosting and package registries.
    _token("github-pat", r"ghp_[0-9a-zA-Z]{36}+"),
    _token("github-oauth-token", r"gho_[0-9a-zA-Z]{36}+"),
    _token("github-app-token", r"gh[us]_[0-9a-zA-Z]{36}+"),
    _token("github-refresh-token", r"ghr_[0-9a-zA-Z]{36,76}+"),
    _token("github-fine-grained-pat", r"github_pat_[0-9a-zA-Z_]{60,120}+"),
    _token("gitlab-token", r"gl(?:pat|ptt|dt|rt|cbt|oas|soat|ffct|imt|ft|agent)-[0-9a-zA-Z_-]{20,64}+"),
    _token("gitlab-token", r"GR1348941[\w-]{20}+"),
    _token("npm-token", r"npm_[A-Za-z0-9]{36}+"),
    _token("pypi-token", r"pypi-(?:AgEIcHlwaS5vcmc|AgENdGVzdC5weXBpLm9yZw)[\w-]{50,1000}+"),
    _token("atlassian-api-token", r"ATATT3[A-Za-z0-9_=-]{150,250}+", 3.5),
    # Messaging and e-mail.
    _token("slack-token", r"xox(?:[abposr]|e(?:\.xox[bp])?)-[0-9A-Za-z-]{10,250}+"),
    _token("slack-app-token", r"xapp-\d-[A-Z0-9]{6,20}+-\d{6,20}+-[a-z0-9]{32,80}+"),
    _token(
        "slack-webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,120}+",
        left=None,
        right=None,
        lead=r"(?:https?://)?\Z",
        lead_window=8,
    ),
    _token(
        "discord-webhook",
        r"discord(?:app)?\.com/api/webhooks/\d{15,20}+/[\w-]{60,70}+",
        left=None,
        lead=r"https://(?:ptb\.|canary\.)?\Z",
        lead_window=15,
    ),
    _token(
        "discord-bot-token",
        r"\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40}+",
        check=discord_id_ok,
        left=re.compile(r"[A-Za-z0-9_-]"),
        lead=r"[MNO][A-Za-z0-9_-]{23,27}\Z",
        lead_window=28,
    ),
    _token(
        "telegram-bot-token",
        r":AA[A-Za-z0-9_-]{33}+",
        left=re.compile(r"\d"),
        lead=r"\d{8,10}\Z",
        lead_window=10,
    ),
    _token(
        "sendgrid-api-key", r"SG\.[A-Za-z0-9_.-]{60,80}+", shape=r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"
    ),
    _token("mailgun-api-key", r"key-[a-f0-9]{32}+"),
    _context(
        "mailgun-api-key",
        [r"mailgun[\w.-]{0,20}?(?:key|token|secret)"],
        r"[a-f0-9]{32}-[a-f0-9]{8}-[a-f0-9]{8}",
    ),
    _token(
        "mailchimp-api-key",
        r"-us\d{1,2}+",
        left=re.compile(r"[0-9a-f]"),
        lead=r"[0-9a-f]{32}\Z",
        lead_window=32,
    ),
    _token("twilio-api-key", r"SK[0-9a-fA-F]{32}+"),
    _context("twilio-auth-token", [r"twilio[\w.-]{0,20}?(?:auth|token|secret|key)"], r"[0-9a-f]{32}", 3.0),
    # Payments and SaaS.
    _token("stripe-secret-key", r"sk_(?:live|test|prod)_[A-Za-z0-9]{10,99}+", 2.5),
    _token("stripe-restricted-key", r"rk_(?:live|test|prod)_[A-Za-z0-9]{10,99}+", 2.5),
    _token("stripe-webhook-secret", r"whsec_[A-Za-z0-9]{32,64}+"),
    _token("square-token", r"sq0(?:atp|csp)-[\w-]{22,60}+"),
    _token("shopify-token", r"shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}+"),
    _context(
        "datadog-key",
        [r"datadog[\w.-]{0,20}?(?:key|token)", r"dd[_.-](?:api|app|application|client)[_.-]?key"],
        r"[a-f0-9]{40}|[a-f0-9]{32}",
        3.0,
    ),
    _token("newrelic-key", r"NR(?:AK|II|JS)-[A-Za-z0-9]{19,42}+"),
    _token("postman-api-key", r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}+"),
    _token("linear-api-key", r"lin_api_[A-Za-z0-9]{40}+"),
    _token("grafana-token", r"glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}+"),
    _token("grafana-token", r"glc_[A-Za-z0-9+/]{32,400}+={0,2}", right=_B64_RIGHT),
    _token("doppler-token", r"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}+"),
    _token("sentry-token", r"sntry[su]_[A-Za-z0-9+/=_-]{40,400}+", 3.5, right=_B64_RIGHT),
    # AI providers (Anthropic before OpenAI: both start with sk-).
    _token("anthropic-api-key", r"sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_-]{32,200}+", 3.5),
    _token("openai-api-key", r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,300}+", 3.5),
    _token("openai-api-key", r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}+", 3.5),
    _token("openai-api-key", r"sk-[A-Za-z0-9]{48}+", 3.5),
    _token("huggingface-token", r"hf_[A-Za-z0-9]{30,40}+", 3.5),
    _token("huggingface-token", r"api_org_[A-Za-z0-9]{30,40}+", 3.5),
    # Tokens in URLs and headers.
    _token(
        "jwt",
        r"eyJ[A-Za-z0-9_.+/=-]{20,12000}+",
        check=jwt_header_ok,
        right=None,
        shape=r"ey[A-Za-z0-9_-]{10,}+={0,2}\.ey[A-Za-z0-9_-]{10,}+={0,2}(?:\.[A-Za-z0-9_+/-]*+={0,2})?",
    ),
    Rule(
        "url-credentials",
        (re.compile(_URL_USERINFO),),
        check=url_password_ok,
        scheme_kinds=(
            (re.compile(rf"(?i:{_SCHEMES_DB})"), "connection-string-password"),
            (re.compile(rf"(?i:{_SCHEMES_URL})"), "url-credentials"),
        ),
    ),
    Rule(
        "basic-auth-header",
        (
            re.compile(
                r"authorization[\"']?\s{0,3}+[:=]\s{0,3}+[\"']?basic\s{1,3}+"
                r"(?P<s>[a-z0-9+/]{8,500}+={0,2})(?![a-z0-9+/=])"
            ),
        ),
        lowered=True,
        check=basic_auth_ok,
    ),
    Rule(
        "bearer-token",
        (
            re.compile(
                r"authorization[\"']?\s{0,3}+[:=]\s{0,3}+[\"']?bearer\s{1,3}+"
                r"(?P<s>[a-z0-9._~+/-]{20,4000}+=*)(?![a-z0-9._~+/=-])"
            ),
        ),
        lowered=True,
        min_entropy=3.5,
        check=lambda v: not is_placeholder(v),
    ),
    # Context rules: a credential-named key assigned a value.
    Rule(
        "password",
        tuple(
            re.compile(
                rf"{key}(?![a-z0-9]){_SEP}(?:\"(?P<dq>[^\"\r\n]{{1,200}}+)\"|'(?P<sq>[^'\r\n]{{1,200}}+)'"
                r"|`(?P<bq>[^`\r\n]{1,200}+)`"
                r"|(?P<bare>[^\s\"'`,;#&()\[\]{}<>]{1,200}+)(?=[ \t]*+(?:$|\r|[,;&]|#|//)))",
                re.M,
            )
            for key in (r"pass(?:word|wd|phrase)?", r"pwd")
        ),
        lowered=True,
        check=password_ok,
        generic=True,
        key_boundary=True,
    ),
    Rule(
        "api-key",
        tuple(
            re.compile(
                rf"{key}(?![a-z0-9]){_SEP}(?:\"(?P<dq>[a-z0-9+/=_.~-]{{16,200}}+)\"|'(?P<sq>[a-z0-9+/=_.~-]{{16,200}}+)'"
                r"|(?P<bare>[a-z0-9+/=_.~-]{16,200}+)(?![^\s;,)\]}#&]))"
            )
            for key in ("key", "apikey", "token", "secret", r"credentials?", "auth")
        ),
        lowered=True,
        check=generic_ok,
        generic=True,
        key_boundary=True,
        key_filter=True,
    ),
)

KINDS: tuple[str, ...] = tuple(
    dict.fromkeys([rule.kind for rule in RULES] + [kind for rule in RULES for _, kind in rule.scheme_kinds])
)

# Key names that end like a credential key but hold none (public keys, database keys, UI keys ...).
NOT_SECRET_KEY = re.compile(
    r"(?i)(?:public|pub|primary|foreign|sort|partition|cache|idempotency|natural|composite|unique|shard|hash"
    r"|routing|row|object|s3|map|dict|lookup|license|licence|site|recaptcha[_.-]?site|publishable|anon"
    r"|csrf|xsrf|next[_.-]?page|page|continuation|pagination|cursor|refresh[_.-]?interval)[_.-]?(?:key|token)$"
)
