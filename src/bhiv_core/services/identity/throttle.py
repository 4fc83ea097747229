"""Login throttling: failed logins slow down whoever guesses, not the account's owner elsewhere.

Following OWASP's authentication guidance, a failed login counts on three counters, each of which
backs off on its own once it reaches its threshold (1 s, then twice as long with each further
failure, up to a maximum):

- **the username from this client address** (default: after 5): one guesser at one account;
- **this client address, whatever the username** (default: after 20): password spraying;
- **the username from every address together** (default: after 100): a distributed attack. It is
  much higher than the first, so locking someone out takes failures from many addresses, and a
  guesser at one address never locks the owner out from another.

While any of the three backs off, a login it covers is refused with RESOURCE_EXHAUSTED before the
password is checked.

The counters are keyed by the **submitted** username (case-folded) and the client address (an IPv6
address by its /64, which one client usually holds whole), never by user id, and are counted the
same way whether or not the username exists: an unknown username backs off, answers and costs
exactly like a known one, and the refusal carries no user id and no count, so throttling tells an
unauthenticated caller nothing about which accounts exist. Keys are stored as SHA-256 digests, so
the store never holds typed usernames (sometimes a password typed into the wrong field).

A counter is forgotten a window after its last failure or the end of its backoff, whichever is
later, and the store keeps a bounded number of them (:class:`LoginThrottleSettings`), so spraying
random usernames or addresses cannot grow it without bound.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass

from bhiv_core.runtime.errors import QuotaViolation, ResourceExhausted
from bhiv_core.services.identity.config import LoginThrottleSettings
from bhiv_core.services.identity.store import IdentityStore, LockPolicy, ThrottleEntry, username_key

__all__ = [
    "LoginThrottle",
    "ThrottleCheck",
    "ThrottleKeys",
    "address_key",
    "backoff_seconds",
    "describe",
    "login_throttled",
]

_MAX_DOUBLINGS = 20
"""Past this many doublings the backoff is far beyond any sensible maximum; stops 2**n growing."""


def backoff_seconds(failures: int, after: int, max_seconds: float) -> float:
    """How long a counter backs off at ``failures``: 0 below ``after``, then 1, 2, 4 … s up to the maximum."""
    if failures < after:
        return 0.0
    return float(min(max_seconds, 2 ** min(failures - after, _MAX_DOUBLINGS)))


def address_key(address: str) -> str:
    """The address a counter is kept for: an IPv4 address, an IPv6 /64, or the text as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ThrottleKeys:
    """The three counters one login attempt counts on (hashed keys).

    Attributes:
        account_address: The submitted username from this client address.
        address: This client address, whatever the username.
        account: The submitted username, from every address.

    """

    account_address: str
    address: str
    account: str

    @classmethod
    def of(cls, username: str, address: str) -> ThrottleKeys:
        """The counters of ``username`` (as submitted; case does not matter) tried from ``address``."""
        user, where = username_key(username), address_key(address)
        return cls(
            account_address=_digest("account+address", user, where),
            address=_digest("address", where),
            account=_digest("account", user),
        )


@dataclass(frozen=True, slots=True)
class ThrottleCheck:
    """What the counters said before an attempt.

    Attributes:
        keys: The attempt's counters.
        wait_seconds: How long until every counter covering it stops backing off; 0 when none does.
        backing_off: Which counters back off (``account_address``, ``address``, ``account``).
        has_failures: True when the username from this address has failures on record (a
            successful login clears them).

    """

    keys: ThrottleKeys
    wait_seconds: float
    backing_off: tuple[str, ...]
    has_failures: bool


def login_throttled(wait_seconds: float) -> ResourceExhausted:
    """The refusal of a throttled login: the same for every username, with no id and no count."""
    wait = max(1, math.ceil(wait_seconds))
    return ResourceExhausted(
        f"too many failed logins: try again in {wait} s",
        violations=[QuotaViolation("login", "too many failed logins; wait before trying again")],
        reason="LOGIN_BACKOFF",
        metadata={"retry_after_seconds": str(wait)},
    )


def describe(counted: Mapping[str, ThrottleEntry], now: float) -> str:
    """The counts :meth:`LoginThrottle.failed` returned, for sentinel (never for the caller)."""
    text = (
        f"failures: {counted['account_address'].failures} of this username from this address, "
        f"{counted['address'].failures} from this address, "
        f"{counted['account'].failures} of this username from all addresses"
    )
    wait = max(entry.locked_until for entry in counted.values()) - now
    return text + (f"; backing off {math.ceil(wait)} s" if wait > 0 else "")


class LoginThrottle:
    """Reads and counts the throttle counters of login attempts in the identity store.

    Args:
        store: The identity store.
        settings: The thresholds, the maximum backoff, the window and the cap on counters.

    """

    def __init__(self, store: IdentityStore, settings: LoginThrottleSettings):
        self._store = store
        self.settings = settings
        cap = settings.max_backoff_seconds
        self._policies: dict[str, LockPolicy] = {
            scope: functools.partial(backoff_seconds, after=after, max_seconds=cap)
            for scope, after in (
                ("account_address", settings.account_address_after),
                ("address", settings.address_after),
                ("account", settings.account_after),
            )
        }

    async def check(self, username: str, address: str, *, now: float) -> ThrottleCheck:
        """Reads the counters of ``username`` tried from ``address``."""
        keys = ThrottleKeys.of(username, address)
        entries = await self._store.login_throttles(
            [getattr(keys, scope) for scope in self._policies], now=now
        )
        locked = {e.key: e.locked_until - now for e in entries if e.locked_until > now}
        return ThrottleCheck(
            keys,
            wait_seconds=max(locked.values(), default=0.0),
            backing_off=tuple(scope for scope in self._policies if getattr(keys, scope) in locked),
            has_failures=any(e.key == keys.account_address for e in entries),
        )

    async def failed(self, keys: ThrottleKeys, *, now: float) -> dict[str, ThrottleEntry]:
        """Counts one failed login on all three counters; returns them by scope, as stored now."""
        counters = {getattr(keys, scope): policy for scope, policy in self._policies.items()}
        entries = await self._store.count_login_failure(
            counters,
            now=now,
            keep_seconds=self.settings.window_seconds,
            max_entries=self.settings.max_entries,
        )
        return dict(zip(self._policies, entries, strict=True))

    async def succeeded(self, check: ThrottleCheck) -> None:
        """Forgets the failures of the username from this address after it logged in.

        The address and account counters stay: a guesser with one valid account must not reset
        its spraying count by logging in to it, nor the owner's login a distributed attack's.
        """
        if check.has_failures:
            await self._store.clear_login_failures(check.keys.account_address)
