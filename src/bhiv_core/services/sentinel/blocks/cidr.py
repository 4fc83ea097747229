"""The strict parser of the block list's addresses and ranges.

Python's :mod:`ipaddress` is lenient where a block list must not be: it takes a netmask as a
prefix (``10.0.0.0/255.0.0.0``), a prefix with leading zeros (``/08``), zone ids (``fe80::1%eth0``)
and IPv4-mapped IPv6 addresses, which Envoy never sees as a client's address (an IPv4 client is
matched as IPv4). This module takes only the contract's forms: an address, or an address with a
decimal prefix length, host bits zero.
"""

from __future__ import annotations

import ipaddress
import re

from bhiv_core.runtime.errors import FieldViolation, InvalidArgument
from bhiv_core.security.address import Network

__all__ = ["Address", "parse_address", "parse_cidr", "parse_networks"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_PREFIX = re.compile(r"0|[1-9][0-9]{0,2}")
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f.:]+")


def _bad(field: str, text: str, why: str, reason: str) -> InvalidArgument:
    shown = text if len(text) <= 64 else text[:64] + "…"
    return InvalidArgument(violations=[FieldViolation(field, f"{shown!r} {why}", reason)])


def parse_address(text: str, *, field: str = "address") -> Address:
    """One IPv4 or IPv6 address, without a prefix length; INVALID_ARGUMENT otherwise.

    IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) are read as the IPv4 address they hold.
    """
    if not _ADDRESS_CHARS.fullmatch(text):
        raise _bad(field, text, "is not an IPv4 or IPv6 address", "INVALID_ADDRESS")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _bad(field, text, "is not an IPv4 or IPv6 address", "INVALID_ADDRESS") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_cidr(text: str, *, field: str = "cidr") -> Network:
    """An address or a range in CIDR notation, host bits zero; INVALID_ARGUMENT otherwise.

    A single address is the range of its full prefix length (``/32`` or ``/128``).

    Raises:
        InvalidArgument: ``INVALID_CIDR`` for anything but ``address[/prefix]`` (a netmask, a
            prefix with leading zeros or out of range, an IPv4-mapped IPv6 range), and
            ``HOST_BITS_SET`` for a range whose address has bits set past the prefix.

    """
    address_text, slash, prefix_text = text.partition("/")
    if not _ADDRESS_CHARS.fullmatch(address_text) or (slash and not _PREFIX.fullmatch(prefix_text)):
        raise _bad(field, text, "is not an address or a CIDR range (like 203.0.113.0/24)", "INVALID_CIDR")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise _bad(
            field, text, "is not an address or a CIDR range (like 203.0.113.0/24)", "INVALID_CIDR"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise _bad(field, text, "is an IPv4-mapped IPv6 address: write the IPv4 range", "INVALID_CIDR")
    prefix = int(prefix_text) if slash else address.max_prefixlen
    if prefix > address.max_prefixlen:
        raise _bad(field, text, f"has a prefix length over {address.max_prefixlen}", "INVALID_CIDR")
    try:
        return ipaddress.ip_network(f"{address}/{prefix}", strict=True)
    except ValueError:
        raise _bad(
            field,
            text,
            f"has host bits set: the range is {ipaddress.ip_network(f'{address}/{prefix}', strict=False)}",
            "HOST_BITS_SET",
        ) from None


def parse_networks(text: str) -> tuple[Network, ...]:
    """A comma-separated list of CIDR ranges or addresses (a setting); ValueError on a bad one."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(parse_cidr(item))
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
    return tuple(networks)
