"""The one SSRF-safe HTTP client: every request that leaves the mesh for a configured address.

Integrations' external calls and webhook deliveries (and any other part that sends HTTP to an
address a user typed) go through :class:`OutboundClient`. What it guarantees:

- **Allowlist.** The URL's host must match an entry of :class:`OutboundPolicy`: an exact host
  name (``api.example.com``), a suffix (``*.example.com``: any name below ``example.com``, not
  ``example.com`` itself), an address (``203.0.113.7``, ``[2001:db8::7]``) or a CIDR range
  (``198.51.100.0/24``). A literal address host matches only address and range entries.
- **Addresses, checked where the connection goes.** The host is resolved once per hop (the
  resolver is injectable; by default ``getaddrinfo`` on a worker thread), *every* address is
  checked, and the socket is opened to one of those checked addresses, never to the name, so a
  DNS answer that changes between check and connect (rebinding) cannot redirect it. For
  ``https`` the TLS server name (SNI) and the certificate check use the host name, and the
  ``Host`` header carries it. An address that is private, loopback, link-local, multicast,
  reserved, unspecified, shared (carrier-grade NAT, 100.64.0.0/10) or otherwise not globally
  routable is refused, and so are the IPv6 forms that reach such an IPv4 address (IPv4-mapped
  ``::ffff:a.b.c.d``, the deprecated IPv4-compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64
  ``64:ff9b::/96``, Teredo ``2001::/32``) and the local-use NAT64 range ``64:ff9b:1::/48`` — unless
  an address or range entry of the allowlist covers the address. Cloud metadata endpoints
  (``169.254.169.254``, ``fd00:ec2::254``, ``100.100.100.200``) are reached only through an entry
  naming that exact address; no range entry, however wide, covers them.
- **Literal hosts are parsed strictly.** ``ipaddress`` decides what an address is. Host names
  that other parsers read as IPv4 (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``: a last
  label of only digits or a ``0x`` number) are refused as ambiguous, never resolved (the C
  resolver would turn them into 127.0.0.1); IPv6 zone identifiers, user information in the
  authority and non-ASCII or percent-encoded hosts are refused as bad URLs.
- **Bounded.** A connect timeout per address and a total timeout for the whole call (redirects
  included); at most ``max_response_bytes`` of a body are kept, the rest is not read and the
  response says ``truncated``; status line and headers are bounded too. Proxies from the
  environment (``HTTP_PROXY`` …) are never used: the client opens its own sockets.
- **Redirects** are followed only when ``max_redirects > 0``; each hop goes through the same
  allowlist and address checks, a change of origin (scheme, host or port) drops the credential
  headers (``Authorization``, ``Proxy-Authorization``, ``Cookie`` and the caller's
  ``credential_headers``, such as an API-key header), 303 (and 301/302 after a POST) turns into a
  GET without body, 307/308 keep method and body. When the hops run out, the last 3xx is returned.
- **Errors say what, never with what.** :class:`OutboundRefused` (reason ``HOST_NOT_ALLOWED`` or
  ``ADDRESS_FORBIDDEN``), :class:`OutboundTimeout`, :class:`OutboundUnavailable` and
  :class:`OutboundBadRequest` name the host at most: never the path, query, headers or body.

The client speaks HTTP/1.1 with ``Connection: close``, one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urljoin, urlsplit

__all__ = [
    "ADDRESS_FORBIDDEN",
    "HOST_NOT_ALLOWED",
    "METADATA_ADDRESSES",
    "RESERVED_HEADERS",
    "Address",
    "AllowEntry",
    "OutboundBadRequest",
    "OutboundClient",
    "OutboundError",
    "OutboundPolicy",
    "OutboundRefused",
    "OutboundResponse",
    "OutboundTimeout",
    "OutboundUnavailable",
    "Resolver",
    "address_problem",
    "parse_allowlist",
    "system_resolver",
    "url_form_problem",
]

HOST_NOT_ALLOWED: Final = "HOST_NOT_ALLOWED"
"""Refusal reason: the URL's host matches no allowlist entry."""
ADDRESS_FORBIDDEN: Final = "ADDRESS_FORBIDDEN"
"""Refusal reason: the host is (or resolves to) an address outbound calls may not reach."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Iterable[str] | Awaitable[Iterable[str]]]
"""Host name → its addresses as strings (sync or async); raises OSError when the name is unknown."""

METADATA_ADDRESSES: Final[frozenset[Address]] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
"""Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba)."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_COMPAT = ipaddress.IPv6Network("::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# What some parser (inet_aton, browsers' URL standard) reads as an IPv4 number: never resolve it.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_ALWAYS_DROPPED = frozenset({"authorization", "proxy-authorization", "cookie"})
# Set by the client itself: a caller's value would let it smuggle a second request or lie.
RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"}
)
"""Header names (lowercase) the client sets itself and refuses from callers."""
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_LINE = 8192
_MAX_HEADERS = 100
_MAX_HEADER_BYTES = 64 * 1024


class OutboundError(Exception):
    """Base of the client's errors; the message names at most the host, never secrets."""


class OutboundRefused(OutboundError):
    """The call was refused before any byte left: ``reason`` is HOST_NOT_ALLOWED or ADDRESS_FORBIDDEN.

    Attributes:
        reason: :data:`HOST_NOT_ALLOWED` or :data:`ADDRESS_FORBIDDEN`.
        host: the URL's host (for ADDRESS_FORBIDDEN possibly a redirect's host).
    """

    def __init__(self, reason: str, host: str, detail: str = "") -> None:
        self.reason = reason
        self.host = host
        text = (
            f"host {host!r} is not on the outbound allowlist"
            if reason == HOST_NOT_ALLOWED
            else f"host {host!r} is or resolves to an address outbound calls may not reach"
        )
        super().__init__(f"{text}{': ' + detail if detail else ''}")


class OutboundTimeout(OutboundError):
    """The external system did not answer (connect or whole call) within the timeout."""


class OutboundUnavailable(OutboundError):
    """The external system could not be reached or spoke no HTTP: DNS, connect, TLS, a bad response."""


class OutboundBadRequest(OutboundError, ValueError):
    """The request itself is malformed: a bad URL, method, header name or value."""


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One parsed allowlist entry: exactly one of ``name``, ``suffix`` and ``network`` is set.

    Attributes:
        text: the entry as configured.
        name: an exact host name, lowercase, without trailing dot.
        suffix: for ``*.example.com``, ``.example.com``.
        network: an address (a /32 or /128) or a range.
    """

    text: str
    name: str | None = None
    suffix: str | None = None
    network: Network | None = None

    @property
    def single_address(self) -> bool:
        """True for an entry naming one address (a /32 or /128)."""
        return self.network is not None and self.network.num_addresses == 1


def _hostname(text: str) -> str | None:
    """``text`` as a lowercase host name, or None when it is not one (or reads as a number)."""
    host = text.lower().removesuffix(".")
    if not host or len(host) > 253 or not host.isascii():
        return None
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    return host


def parse_allowlist(entries: Iterable[str]) -> tuple[AllowEntry, ...]:
    """Parses allowlist entries; raises ValueError naming the first that is none of the four forms."""
    parsed: list[AllowEntry] = []
    for raw in entries:
        text = raw.strip()
        if not text:
            continue
        if text.startswith("*."):
            name = _hostname(text[2:])
            if name is None or "." not in name:
                raise ValueError(
                    f"allowlist entry {text!r}: a suffix needs a domain with a dot (*.example.com)"
                )
            parsed.append(AllowEntry(text, suffix="." + name))
            continue
        bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            network = ipaddress.ip_network(bare, strict=True)
        except ValueError:
            network = None
            if "/" in bare or ":" in bare:
                raise ValueError(f"allowlist entry {text!r} is not a valid address or CIDR range") from None
        if network is not None:
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
                mapped = network.network_address.ipv4_mapped
                if mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d: the client connects over IPv4
                    network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
            parsed.append(AllowEntry(text, network=network))
            continue
        name = _hostname(text)
        if name is None:
            raise ValueError(
                f"allowlist entry {text!r} is not a host name, *.suffix, address or CIDR range"
                " (numeric forms such as 2130706433 or 0177.0.0.1 are ambiguous)"
            )
        parsed.append(AllowEntry(text, name=name))
    return tuple(parsed)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _COMPAT and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_problem(address: Address) -> str | None:
    """Why outbound calls may not reach ``address`` without an allowlist entry, or None when they may."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata endpoint"
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if address in _COMPAT and int(address) > 1:
            return "a deprecated IPv4-compatible IPv6 address"
        if address in _TEREDO:
            return "a Teredo tunnel address"
        inner = _embedded_ipv4(address)
        if inner is not None:
            problem = address_problem(inner)
            if problem is not None:
                return f"an IPv6 form of {problem}"
            if address.ipv4_mapped is not None or address in _NAT64:
                return None  # the IPv4 address decides; the IPv6 prefix itself is fine
    checks = (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a globally routable address"),
    )
    for failed, why in checks:
        if failed:
            return why
    return None


@dataclass(frozen=True)
class OutboundPolicy:
    """Where outbound calls may go.

    Attributes:
        allowlist: entries as configured (``BHIV_OUTBOUND_ALLOWLIST``): host names, ``*.suffix``,
            addresses and CIDR ranges; parsed (and checked: a bad entry raises ValueError) here.
        max_response_bytes: the default cap on a response body.
        connect_timeout: seconds allowed to open a connection to one address (TLS included).
    """

    allowlist: tuple[str, ...]
    max_response_bytes: int = 1 << 20
    connect_timeout: float = 5.0
    entries: tuple[AllowEntry, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Parses the allowlist once."""
        if self.max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")
        object.__setattr__(self, "entries", parse_allowlist(self.allowlist))

    def host_allowed(self, host: str | Address) -> bool:
        """True when the host (a lowercase name, or an address) matches an allowlist entry."""
        if isinstance(host, str):
            return any(
                e.name == host or (e.suffix is not None and host.endswith(e.suffix)) for e in self.entries
            )
        return any(e.network is not None and _covers(e.network, host) for e in self.entries)

    def address_refusal(self, address: Address) -> str | None:
        """Why ``address`` may not be reached under this policy, or None when it may."""
        problem = address_problem(address)
        if problem is None:
            return None
        if address in METADATA_ADDRESSES:
            exact = any(
                e.single_address and e.network is not None and _covers(e.network, address)
                for e in self.entries
            )
            return None if exact else problem
        if any(e.network is not None and _covers(e.network, address) for e in self.entries):
            return None
        return problem


def _covers(network: Network, address: Address) -> bool:
    return network.version == address.version and address in network


async def system_resolver(host: str) -> list[str]:
    """The host's addresses from the system resolver (``getaddrinfo`` on a worker thread)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """What the external system answered.

    Attributes:
        status: the HTTP status code.
        headers: header names lowercased; repeated headers joined with ``, ``.
        body: at most the call's ``max_response_bytes`` of the body.
        truncated: True when the body was longer and was cut.
        seconds: the duration of the whole call (connects, redirects and body included).
        url: the URL that answered (differs from the request's after redirects).
    """

    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool
    seconds: float
    url: str = ""


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str  # lowercase name, or the address's text
    address: Address | None  # set for a literal address host
    port: int
    target: str  # path + query, as sent on the request line
    url: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, ipaddress.IPv6Address) else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _parse_url(url: str) -> _Target:
    """Splits and checks ``url``; raises OutboundBadRequest or OutboundRefused(ADDRESS_FORBIDDEN)."""
    # urlsplit silently deletes tabs and newlines: refuse them rather than call another URL.
    if len(url) > 8192 or _BAD_VALUE.search(url) or " " in url or "\t" in url or not url.isascii():
        raise OutboundBadRequest("the URL has spaces, control or non-ASCII characters, or is too long")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundBadRequest("the URL cannot be parsed (bad host or port)") from None
    if parts.scheme not in ("http", "https"):
        raise OutboundBadRequest("the URL must be http:// or https://")
    netloc = parts.netloc
    if "@" in netloc:
        raise OutboundBadRequest("the URL must not carry user information (user@host)")
    host_text = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
    if host_text.startswith("["):
        inner = host_text[1:].split("]", 1)[0]
        if "%" in inner:
            raise OutboundBadRequest("the URL's IPv6 address must not carry a zone identifier")
        try:
            address: Address | None = ipaddress.IPv6Address(inner)
        except ValueError:
            raise OutboundBadRequest("the URL's bracketed host is not an IPv6 address") from None
    else:
        try:
            address = ipaddress.IPv4Address(host_text)
        except ValueError:
            address = None
    if address is None:
        host = _hostname(host_text)
        if host is None:
            if host_text and re.fullmatch(r"[0-9a-fA-Fx.]+", host_text):
                raise OutboundRefused(ADDRESS_FORBIDDEN, host_text, "an ambiguous numeric address form")
            raise OutboundBadRequest("the URL's host is not a valid host name or address")
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # one address, one form: it is checked and reached as IPv4
        host = str(address)
    if port == 0:
        raise OutboundBadRequest("the URL's port must be 1-65535")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return _Target(
        scheme=parts.scheme,
        host=host,
        address=address,
        port=port or (443 if parts.scheme == "https" else 80),
        target=target,
        url=url.split("#", 1)[0],
    )


def url_form_problem(url: str) -> str | None:
    """Why ``url`` is not an ``http(s)://`` URL the client could ever call (whatever the policy), or None.

    For checking a stored base URL at create time, when the allowlist that applies at call time
    may still change.
    """
    try:
        _parse_url(url)
    except (OutboundBadRequest, OutboundRefused) as exc:
        return str(exc)
    return None


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or len(name) > 256:
            raise OutboundBadRequest("a header name is not an HTTP token")
        if _BAD_VALUE.search(value) or len(value) > 8192 or not _latin1(value):
            raise OutboundBadRequest(
                f"the value of header {name!r} has control or non-Latin-1 characters, or is too long"
            )
        if name.lower() in RESERVED_HEADERS:
            raise OutboundBadRequest(f"header {name!r} is set by the client itself")


class OutboundClient:
    """Sends HTTP requests only where an :class:`OutboundPolicy` allows (see the module docstring).

    Args:
        policy: the allowlist and the default caps.
        resolver: host name → addresses (sync or async); tests inject one, the default is
            :func:`system_resolver`.
        ssl_context: the TLS context for ``https`` (default: the system's trust store with
            hostname checking); tests pass one that trusts their own CA.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        resolver: Resolver | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self._resolver: Resolver = resolver or system_resolver
        self._ssl = ssl_context

    def url_problem(self, url: str) -> str | None:
        """Why ``url`` can never be called under the policy, or None when it may be.

        Catches a bad form, a host not on the allowlist and a literal forbidden address. Names
        resolve at call time, so a name that will resolve to a forbidden address passes here.
        """
        try:
            target = _parse_url(url)
            self._check_target(target)
        except (OutboundBadRequest, OutboundRefused) as exc:
            return str(exc)
        return None

    def _check_target(self, target: _Target) -> None:
        # A literal forbidden address says so first: "metadata endpoint" explains more than
        # "not on the allowlist", and an entry that would allow it covers both anyway.
        if target.address is not None:
            problem = self.policy.address_refusal(target.address)
            if problem is not None:
                raise OutboundRefused(ADDRESS_FORBIDDEN, target.host, problem)
        if not self.policy.host_allowed(target.address if target.address is not None else target.host):
            raise OutboundRefused(HOST_NOT_ALLOWED, target.host)

    async def _addresses(self, target: _Target) -> list[Address]:
        if target.address is not None:
            return [target.address]
        try:
            answer = self._resolver(target.host)
            if inspect.isawaitable(answer):
                answer = await answer
            raw = list(answer)
        except (OSError, UnicodeError) as exc:
            raise OutboundUnavailable(
                f"host {target.host!r} could not be resolved ({type(exc).__name__})"
            ) from None
        addresses: list[Address] = []
        for text in raw:
            try:
                address = ipaddress.ip_address(str(text).split("%", 1)[0])
            except ValueError:
                raise OutboundUnavailable(
                    f"host {target.host!r} resolved to something not an address"
                ) from None
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OutboundUnavailable(f"host {target.host!r} has no addresses")
        # Every answer must pass: a name with one public and one internal address is refused
        # whole, so which one a retry happens to use never matters.
        for address in addresses:
            problem = self.policy.address_refusal(address)
            if problem is not None:
                raise OutboundRefused(ADDRESS_FORBIDDEN, target.host, problem)
        return addresses

    async def _connect(
        self, target: _Target, addresses: list[Address]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context: ssl.SSLContext | None = None
        if target.scheme == "https":
            context = self._ssl or ssl.create_default_context()
        last: BaseException | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(self.policy.connect_timeout):
                    # The checked address itself, never the name: nothing re-resolves here.
                    return await asyncio.open_connection(
                        host=str(address),
                        port=target.port,
                        ssl=context,
                        server_hostname=target.host if context is not None else None,
                        limit=_MAX_LINE * 2,
                    )
            except TimeoutError as exc:
                last = exc
            except (OSError, ssl.SSLError) as exc:
                last = exc
        if isinstance(last, TimeoutError):
            raise OutboundTimeout(
                f"connecting to host {target.host!r} timed out after {self.policy.connect_timeout:g} s"
            )
        kind = "TLS handshake" if isinstance(last, ssl.SSLError) else "connection"
        reason = type(last).__name__ if last is not None else "no address"
        raise OutboundUnavailable(f"{kind} to host {target.host!r} failed ({reason})")

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout: float = 10.0,  # noqa: ASYNC109 -- the budget spans hops; the caller's deadline is separate
        max_redirects: int = 0,
        max_response_bytes: int | None = None,
        credential_headers: Collection[str] = (),
    ) -> OutboundResponse:
        """Sends one request (following up to ``max_redirects`` redirects) and reads the answer.

        Args:
            method: an HTTP method token (``GET``, ``POST`` …).
            url: an ``http://`` or ``https://`` URL whose host the policy allows.
            headers: request headers; ``Host``, ``Content-Length``, ``Transfer-Encoding``,
                ``Connection``, ``TE`` and ``Upgrade`` are set by the client and refused here.
            body: the request body (sent with a ``Content-Length``).
            timeout: seconds for the whole call, redirects and body included.
            max_redirects: how many redirects to follow; 0 returns a 3xx as it is.
            max_response_bytes: the body cap of this call (default: the policy's).
            credential_headers: further header names to drop when a redirect changes origin
                (``Authorization``, ``Proxy-Authorization`` and ``Cookie`` always are).

        Returns:
            The final response; an HTTP error status is a normal response.

        Raises:
            OutboundBadRequest: a malformed URL, method or header.
            OutboundRefused: the host is not allowlisted or an address is forbidden (any hop).
            OutboundTimeout: no complete answer within ``timeout`` (or a connect timeout).
            OutboundUnavailable: DNS, connect or TLS failure, or a response that is not HTTP.
        """
        if not _TOKEN.fullmatch(method) or len(method) > 32:
            raise OutboundBadRequest("the method is not an HTTP token")
        if not 0 <= max_redirects <= 20:
            raise OutboundBadRequest("max_redirects must be 0-20")
        if timeout <= 0:
            raise OutboundBadRequest("timeout must be positive")
        cap = self.policy.max_response_bytes if max_response_bytes is None else max_response_bytes
        if cap < 0:
            raise OutboundBadRequest("max_response_bytes must not be negative")
        request_headers = dict(headers or {})
        _check_headers(request_headers)
        drop = _ALWAYS_DROPPED | {h.lower() for h in credential_headers}
        target = _parse_url(url)
        started = time.monotonic()
        method = method.upper()
        try:
            async with asyncio.timeout(timeout):
                hops = 0
                while True:
                    self._check_target(target)
                    addresses = await self._addresses(target)
                    status, response_headers, data, truncated = await self._exchange(
                        target, addresses, method, request_headers, body, cap
                    )
                    location = response_headers.get("location")
                    if status not in _REDIRECTS or location is None or hops >= max_redirects:
                        return OutboundResponse(
                            status, response_headers, data, truncated, time.monotonic() - started, target.url
                        )
                    hops += 1
                    try:
                        following = _parse_url(urljoin(target.url, location.strip()))
                    except OutboundBadRequest:
                        raise OutboundUnavailable(
                            f"host {target.host!r} redirected to an unusable URL"
                        ) from None
                    if following.origin != target.origin:
                        request_headers = {k: v for k, v in request_headers.items() if k.lower() not in drop}
                    if status == 303 or (status in (301, 302) and method == "POST"):
                        if method != "HEAD":
                            method = "GET"
                        body = b""
                        request_headers = {
                            k: v for k, v in request_headers.items() if k.lower() not in ("content-type",)
                        }
                    target = following
        except TimeoutError:
            raise OutboundTimeout(
                f"the call to host {target.host!r} did not complete within {timeout:g} s"
            ) from None

    async def _exchange(
        self,
        target: _Target,
        addresses: list[Address],
        method: str,
        headers: Mapping[str, str],
        body: bytes,
        cap: int,
    ) -> tuple[int, dict[str, str], bytes, bool]:
        reader, writer = await self._connect(target, addresses)
        try:
            lines = [f"{method} {target.target} HTTP/1.1", f"Host: {target.host_header}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            if body or method in ("POST", "PUT", "PATCH"):
                lines.append(f"Content-Length: {len(body)}")
            if not any(name.lower() == "user-agent" for name in headers):
                lines.append("User-Agent: bhiv-outbound")
            lines.append("Connection: close")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            return await _read_response(reader, method, target.host, cap)
        except (
            OSError,
            ssl.SSLError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as exc:
            if isinstance(exc, OutboundError):
                raise
            raise OutboundUnavailable(
                f"host {target.host!r} broke off or answered no valid HTTP ({type(exc).__name__})"
            ) from None
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readuntil(b"\n")
    if len(line) > _MAX_LINE:
        raise OutboundUnavailable("a response line is too long")
    return line.rstrip(b"\r\n")


async def _read_response(
    reader: asyncio.StreamReader, method: str, host: str, cap: int
) -> tuple[int, dict[str, str], bytes, bool]:
    while True:
        status_line = await _read_line(reader)
        match = re.fullmatch(rb"HTTP/1\.[01] ([1-5][0-9]{2})(?: .*)?", status_line)
        if match is None:
            raise OutboundUnavailable(f"host {host!r} answered no valid HTTP status line")
        status = int(match.group(1))
        headers: dict[str, str] = {}
        count = size = 0
        while True:
            line = await _read_line(reader)
            if not line:
                break
            count += 1
            size += len(line)
            if count > _MAX_HEADERS or size > _MAX_HEADER_BYTES:
                raise OutboundUnavailable(f"host {host!r} answered too many header bytes")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise OutboundUnavailable(f"host {host!r} answered a malformed header")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if 100 <= status < 200 and status != 101:
            continue  # interim (100 Continue, 103 Early Hints): the real answer follows
        break
    if method == "HEAD" or status in (101, 204, 304) or 100 <= status < 200:
        return status, headers, b"", False
    chunks: list[bytes] = []
    kept = 0

    def keep(data: bytes) -> None:
        nonlocal kept
        chunks.append(data)
        kept += len(data)

    if "chunked" in headers.get("transfer-encoding", "").lower():
        while kept <= cap:
            size_line = await _read_line(reader)
            # Strictly hex digits (int() would also take "0x1f", "+a", "1_0" or a minus sign).
            token = size_line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(token):
                raise OutboundUnavailable(f"host {host!r} answered a malformed chunk")
            size = int(token, 16)
            if size == 0:
                break
            keep(await reader.readexactly(min(size, cap + 1 - kept)))
            if kept > cap:
                break
            if await reader.readexactly(2) != b"\r\n":
                raise OutboundUnavailable(f"host {host!r} answered a malformed chunk")
    elif "content-length" in headers:
        # Repeated or listed values must agree (RFC 9112 6.3); anything but digits is refused.
        values = {value.strip() for value in headers["content-length"].split(",")}
        if len(values) != 1 or not all(value.isascii() and value.isdigit() for value in values):
            raise OutboundUnavailable(f"host {host!r} answered a malformed Content-Length")
        length = int(values.pop())
        keep(await reader.readexactly(min(length, cap + 1)))
    else:
        while kept <= cap:
            data = await reader.read(min(65536, cap + 1 - kept))
            if not data:
                break
            keep(data)
    body = b"".join(chunks)
    return status, headers, body[:cap], len(body) > cap
