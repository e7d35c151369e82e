"""The security layer of ``kb serve``: one ASGI middleware in front of everything it serves.

Every request, before any route sees it:

* **Host** must name this server: an IP literal or ``localhost`` with the server's port, or a name given
  with ``--allow-host`` (behind a proxy). A DNS-rebinding page reaches us under its own name: 403.
* **Origin**, when a browser sends one, must be this server's own origin (same host and port as the Host
  header); ``null`` or any other origin is 403, and so is ``Sec-Fetch-Site: cross-site``. No CORS headers are
  ever sent, so no other site can read a response.
* **Token**: when the server has one (always, on a non-loopback bind), ``/v1/`` and ``/mcp`` need
  ``Authorization: Bearer <token>``, compared in constant time (:func:`hmac.compare_digest`); the page and
  its static files carry no data and are public. The token is never logged or echoed.
* **Limits**: URL path and query length (414), request body size (413, read with a deadline: 408), and a
  per-client token bucket (429 with ``Retry-After``).
* **Headers** on every response: a Content-Security-Policy allowing only this origin's scripts, styles and
  connections (no inline script, no remote loads, ``frame-ancestors 'none'``), ``X-Content-Type-Options:
  nosniff``, ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY``, ``Cache-Control: no-store``.

Errors are JSON: ``{"error": {"type", "message", "exit_code"}}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
PROTECTED = ("/v1/", "/v1", "/mcp")  # paths that carry data: token (when set) and rate limit apply


@dataclass
class Policy:
    """What the middleware enforces (``kb serve``'s flags)."""

    port: int
    token: str | None = None
    allow_hosts: frozenset[str] = frozenset()  # extra Host names (lower case), e.g. behind a proxy
    max_body: int = 64 * 1024  # bytes of one request body
    max_path: int = 2048  # bytes of the URL path
    max_query: int = 2048  # bytes of the query string
    body_timeout: float = 10.0  # seconds a client may take to send its body
    rate: float = 20.0  # requests per second per client (sustained); 0: no limit
    burst: int = 40  # requests a client may send at once
    buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def allow(self, client: str, now: float | None = None) -> float:
        """0 when ``client`` may make a request now (and charge it), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self.buckets[client] = (tokens, now)
        while len(self.buckets) > 10_000:  # bounded memory: forget the least recent clients
            self.buckets.popitem(last=False)
        return wait


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (IPv6 in brackets) as (lower-case host, port), or None when malformed."""
    try:
        parts = urlsplit("//" + value)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.username or parts.password:
        return None
    return host.lower(), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(value: str, policy: Policy) -> bool:
    """Whether a Host header names this server (see the module docstring)."""
    parsed = split_host(value)
    if parsed is None:
        return False
    host, port = parsed
    if host in policy.allow_hosts:
        return True
    return (_is_ip(host) or host == "localhost") and (port or 80) == policy.port


def origin_allowed(origin: str, host_header: str) -> bool:
    """Whether a browser's Origin is this server's own origin (scheme http/https, same host and port)."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or not parts.netloc:
        return False
    own, theirs = split_host(host_header), split_host(parts.netloc)
    if own is None or theirs is None:
        return False
    default = 443 if parts.scheme == "https" else 80
    return own[0] == theirs[0] and (own[1] or default) == (theirs[1] or default)


def error_body(status: int, kind: str, message: str, exit_code: int = 1) -> bytes:
    return json.dumps({"error": {"type": kind, "message": message, "exit_code": exit_code}}).encode()


async def send_error(
    send: Send, status: int, kind: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = error_body(status, kind, message, 2 if status in (400, 413, 414) else 1)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
                *SECURITY_HEADERS,
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int, timeout: float) -> bytes | None:
    """The whole request body (None when the client went away); BodyTooLarge past ``limit`` bytes,
    TimeoutError when it takes longer than ``timeout`` seconds."""
    chunks: list[bytes] = []
    size = 0
    with anyio.fail_after(timeout):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class SecurityMiddleware:
    """Wraps the app: checks, limits and headers of :class:`Policy` (see the module docstring)."""

    def __init__(self, app: ASGIApp, policy: Policy):
        self.app = app
        self.policy = policy
        self.token = policy.token.encode() if policy.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets
            return None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refuse(scope, headers)
        if refusal is not None:
            status, kind, message, extra = refusal
            return await send_error(send, status, kind, message, extra)
        replay = await self.buffered(scope, receive, headers, send)
        if replay is None:
            return None

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [h for h in SECURITY_HEADERS if h[0] not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, replay, secured)

    def refuse(
        self, scope: Scope, headers: dict[str, str]
    ) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        """Why this request is refused (status, error type, message, headers), or None."""
        policy = self.policy
        host = headers.get("host", "")
        if not host_allowed(host, policy):
            return 403, "AccessDeniedError", "This server does not answer to that Host name.", []
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, host):
            return 403, "AccessDeniedError", "Cross-origin requests are not allowed.", []
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "AccessDeniedError", "Cross-site requests are not allowed.", []
        path: str = scope.get("path", "")
        if len(path.encode()) > policy.max_path or len(scope.get("query_string", b"")) > policy.max_query:
            return 414, "BadRequest", "The URL is too long.", []
        if not path.startswith(PROTECTED) or path.startswith("/v1/openapi.json"):
            return None
        client = (scope.get("client") or ("?", 0))[0]
        wait = policy.allow(client)
        if wait > 0:
            return (
                429,
                "KbError",
                f"Too many requests from {client}; try again in {wait:.1f} s.",
                [(b"retry-after", str(max(1, math.ceil(wait))).encode())],
            )
        if self.token is not None:
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token):
                return (
                    401,
                    "AccessDeniedError",
                    "This kb serve needs a token: send Authorization: Bearer <token> "
                    "(kb CLI: set KB_SERVE_TOKEN).",
                    [(b"www-authenticate", b"Bearer")],
                )
        return None

    async def buffered(
        self, scope: Scope, receive: Receive, headers: dict[str, str], send: Send
    ) -> Receive | None:
        """A ``receive`` that replays the body read here (within the size and time limits), then passes
        through (so a streaming response still sees the client disconnect); None when refused."""
        policy = self.policy
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") and "content-length" not in headers:
            return receive
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            await send_error(send, 400, "BadRequest", "Content-Length is not a number.")
            return None
        if declared > policy.max_body:
            await send_error(send, 413, "BadRequest", f"The request body is over {policy.max_body} bytes.")
            return None
        try:
            body = await read_body(receive, policy.max_body, policy.body_timeout)
        except BodyTooLarge:
            await send_error(send, 413, "BadRequest", f"The request body is over {policy.max_body} bytes.")
            return None
        except TimeoutError:
            await send_error(send, 408, "BadRequest", "The request body took too long to arrive.")
            return None
        if body is None:
            return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
