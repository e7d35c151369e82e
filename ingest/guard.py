"""The fetcher's SSRF guard: which URLs and addresses may be contacted, and the errors a fetch raises.

Every request of :class:`ingest.fetch.Fetcher` goes through one policy (:class:`FetchPolicy`):

* only ``http`` and ``https``;
* the host is resolved and EVERY address must be public: loopback, private, link-local (cloud metadata
  169.254.169.254), CGNAT, multicast, reserved and unspecified addresses are refused unless the host (by
  name) or the address (by IP or CIDR) is in ``allow_hosts``. The check runs before any connection is opened,
  again on every redirect hop (redirects are followed by hand), and once more at connect time on the very
  address the socket connects to (:class:`GuardedTransport`: a DNS answer that changes between check and
  connect cannot slip through);
* the policy's caps on redirects, bytes and time, and its content-type allow-list (HTML, markdown, plain
  text, PDF), are applied by the fetcher.

Every refusal and failure is a :class:`FetchError` whose message says what happened; ``unavailable`` tells a
resource that cannot be had (404, 410, 401/403, 451) from a transient failure. Independent of kb (never
imports it).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

ALLOWED_TYPES = (
    "text/html",
    "application/xhtml+xml",
    "text/markdown",
    "text/x-markdown",
    "text/plain",
    "application/pdf",
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """A page could not be fetched; the message is the reason shown to the user."""

    def __init__(
        self, message: str, *, unavailable: bool = False, status: int | None = None, unsupported: bool = False
    ):
        super().__init__(message)
        self.unavailable = unavailable
        self.status = status
        self.unsupported = unsupported  # a content type kb does not read (a linked image, archive, ...)


class FetchRefused(FetchError):
    """The request was refused by the policy before any connection was attempted."""


@dataclass(frozen=True)
class FetchPolicy:
    allow_hosts: tuple[str, ...] = ()
    timeout: float = 20.0
    max_bytes: int = 5_000_000
    max_redirects: int = 5
    content_types: tuple[str, ...] = ALLOWED_TYPES
    user_agent: str = "kb-resources/0.1 (+https://github.com/; offline knowledge base)"

    def _allowed(self) -> tuple[set[str], list[Network]]:
        names: set[str] = set()
        nets: list[Network] = []
        for entry in self.allow_hosts:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return names, nets

    def vet(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return its addresses if ALL may be contacted; raise :class:`FetchRefused`
        otherwise."""
        host = host.strip("[]").lower().rstrip(".")
        names, nets = self._allowed()
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError(f"cannot resolve host {host!r} ({exc}); check the URL or the network") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise FetchError(f"host {host!r} has no address")
        if host in names:
            return addresses
        for text in addresses:
            addr = _unmap(ipaddress.ip_address(text.split("%", 1)[0]))
            if _is_public(addr) or any(addr in net for net in nets):
                continue
            shown = host if host == text else f"{host} ({text})"
            raise FetchRefused(
                f"refused to connect to {shown}: {_kind(addr)} addresses are not fetched. If this host is "
                "trusted, add it to [resources] allow_hosts in kb.toml (or KB_RESOURCES_ALLOW_HOSTS)."
            )
        return addresses

    def check_url(self, url: str) -> list[str]:
        """Refuse URLs that are not http(s) or whose host is not allowed (see :meth:`vet`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchRefused(f"refused {url!r}: only http:// and https:// URLs are fetched")
        if not parts.hostname:
            raise FetchRefused(f"refused {url!r}: no host in the URL")
        if parts.username or parts.password:
            raise FetchRefused(f"refused {url!r}: URLs with credentials are not fetched")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise FetchRefused(f"refused {url!r}: invalid port") from None
        return self.vet(parts.hostname, port)


def _unmap(addr: Address) -> Address:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _is_public(addr: Address) -> bool:
    return bool(addr.is_global) and not (addr.is_multicast or addr.is_reserved or addr.is_unspecified)


def _kind(addr: Address) -> str:
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local (cloud metadata)"
    if addr.is_private:
        return "private-network"
    if addr.is_multicast:
        return "multicast"
    return "non-public"


class _GuardedBackend:
    """httpcore network backend that vets the address it connects to (DNS rebinding cannot bypass the
    check)."""

    def __init__(self, inner: Any, policy: FetchPolicy):
        self._inner = inner
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        address = self._policy.vet(host, port)[0]
        return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the policy's address check at connect time."""

    def __init__(self, policy: FetchPolicy, **kwargs: Any):
        super().__init__(**kwargs)
        pool = getattr(self, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:  # pragma: no cover - an httpx/httpcore release changed its internals
            raise RuntimeError("cannot install the connect-time address check on this httpx version")
        pool._network_backend = _GuardedBackend(backend, policy)  # type: ignore[union-attr]
