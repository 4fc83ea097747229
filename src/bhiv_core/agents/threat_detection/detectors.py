"""Behavioural detectors: brute force, credential stuffing, floods, scanning and token abuse.

Each detector is a pure component: :meth:`Detector.observe` takes an observation and the current
time (the agent's injected clock) and returns the detections it caused, touching nothing else. Memory
is bounded per detector (:class:`~bhiv_core.agents.threat_detection.windows.BoundedMap`, at most
``max_keys`` addresses or accounts, each with at most a threshold's worth of timestamps), and each
subject fires at most once per window (or per cooldown), so an attack yields one detection per
window rather than one per request. Thresholds are constructor arguments with defaults chosen for
one deployment of the mesh; every default is documented on its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bhiv_core.agents.threat_detection.detection import Category, Detection, Severity, printable
from bhiv_core.agents.threat_detection.observations import SCAN_STATUSES, Observation, ObservationKind
from bhiv_core.agents.threat_detection.windows import BoundedMap, DistinctWindow, EventWindow

__all__ = [
    "BruteForceDetector",
    "CredentialStuffingDetector",
    "Detector",
    "FloodDetector",
    "ScanningDetector",
    "TokenAbuseDetector",
    "default_detectors",
]

MAX_KEYS = 100_000
"""The most addresses (or accounts) a detector remembers at once."""


class Detector(Protocol):
    """Turns observations into detections."""

    def observe(self, observation: Observation, now: float) -> list[Detection]:
        """Counts ``observation`` at ``now`` (seconds) and returns the detections it caused."""


def _detection(
    rule: str, category: Category, severity: Severity, observation: Observation, evidence: str, now: float
) -> Detection:
    """A detection of ``rule`` about ``observation``'s address, account and method."""
    return Detection(
        rule_id=rule,
        category=category,
        severity=severity,
        source_address=observation.source_address,
        principal=observation.principal,
        method=observation.method,
        evidence=evidence,
        time=now,
    )


def _account(principal: str) -> str:
    # Usernames are matched case-insensitively by identity; so are they counted here.
    return principal.strip().lower()


class BruteForceDetector:
    """Failed logins per address and per account in a sliding window.

    Fires ``bruteforce.address`` (HIGH) when one address fails ``per_address`` logins within
    ``window_seconds``, ``bruteforce.account`` (HIGH) when one account fails ``per_account`` logins
    from anywhere (password spraying from many addresses), and ``bruteforce.success_after_failures``
    (CRITICAL) when an account logs in after ``per_account`` failures within the window: a guess
    that worked. A successful login clears its account's count (not its address's: a NAT may hide
    both the attacker and the user). Defaults: 10 failures in 300 s, for either.
    """

    def __init__(
        self,
        *,
        window_seconds: float = 300.0,
        per_address: int = 10,
        per_account: int = 10,
        max_keys: int = MAX_KEYS,
    ):
        self.window_seconds = window_seconds
        self.per_address = per_address
        self.per_account = per_account
        self._addresses: BoundedMap[str, EventWindow] = BoundedMap(
            max_keys, lambda: EventWindow(window_seconds, per_address)
        )
        self._accounts: BoundedMap[str, EventWindow] = BoundedMap(
            max_keys, lambda: EventWindow(window_seconds, per_account)
        )

    def observe(self, observation: Observation, now: float) -> list[Detection]:
        """Counts failed logins; checks successful ones against the account's recent failures."""
        found: list[Detection] = []
        account = _account(observation.principal)
        if observation.kind is ObservationKind.LOGIN_FAILED:
            if observation.source_address:
                window = self._addresses.touch(observation.source_address)
                count = window.add(now)
                if count >= self.per_address and window.may_fire(now):
                    found.append(
                        _detection(
                            "bruteforce.address",
                            Category.BRUTE_FORCE,
                            Severity.HIGH,
                            observation,
                            f"{count} failed logins from {observation.source_address} within "
                            f"{self.window_seconds:g} s "
                            f"(latest for {printable(observation.principal, 64)!r})",
                            now,
                        )
                    )
            if account:
                window = self._accounts.touch(account)
                count = window.add(now)
                if count >= self.per_account and window.may_fire(now):
                    found.append(
                        _detection(
                            "bruteforce.account",
                            Category.BRUTE_FORCE,
                            Severity.HIGH,
                            observation,
                            f"{count} failed logins for {printable(observation.principal, 64)!r} within "
                            f"{self.window_seconds:g} s (latest from {observation.source_address})",
                            now,
                        )
                    )
        elif observation.kind is ObservationKind.LOGIN_SUCCEEDED and account:
            seen = self._accounts.get(account)
            if seen is not None:
                failures = seen.count(now)
                seen.clear()
                if failures >= self.per_account:
                    found.append(
                        _detection(
                            "bruteforce.success_after_failures",
                            Category.BRUTE_FORCE,
                            Severity.CRITICAL,
                            observation,
                            f"login for {printable(observation.principal, 64)!r} from "
                            f"{observation.source_address} succeeded after {failures} failures within "
                            f"{self.window_seconds:g} s",
                            now,
                        )
                    )
        return found


class CredentialStuffingDetector:
    """Failed logins for many distinct accounts from one address: a list of stolen pairs being tried.

    Fires ``stuffing.address`` (HIGH) when one address fails logins for ``accounts`` distinct
    usernames within ``window_seconds``. Defaults: 6 accounts in 600 s (one person mistyping their
    own password, or a few colleagues behind one NAT, stay below).
    """

    def __init__(self, *, window_seconds: float = 600.0, accounts: int = 6, max_keys: int = MAX_KEYS):
        self.window_seconds = window_seconds
        self.accounts = accounts
        self._addresses: BoundedMap[str, DistinctWindow] = BoundedMap(
            max_keys, lambda: DistinctWindow(window_seconds, accounts)
        )

    def observe(self, observation: Observation, now: float) -> list[Detection]:
        """Counts the distinct accounts each address failed to log in to."""
        account = _account(observation.principal)
        if (
            observation.kind is not ObservationKind.LOGIN_FAILED
            or not account
            or not observation.source_address
        ):
            return []
        window = self._addresses.touch(observation.source_address)
        count = window.add(account, now)
        if count < self.accounts or not window.may_fire(now):
            return []
        tried = ", ".join(printable(a, 32) for a in window.values()[-5:])
        return [
            _detection(
                "stuffing.address",
                Category.BRUTE_FORCE,
                Severity.HIGH,
                observation,
                f"failed logins for {count} distinct accounts from {observation.source_address} "
                f"within {self.window_seconds:g} s (latest: {tried})",
                now,
            )
        ]


@dataclass(slots=True)
class _Rate:
    """One address's calls: the current bucket and the baseline learnt from earlier ones."""

    bucket: int = -1
    count: int = 0
    baseline: float | None = None
    fired_at: float = float("-inf")
    flooded: bool = False


class FloodDetector:
    """Calls per address per bucket against a baseline learnt from that address (or everyone).

    Time is cut into buckets of ``bucket_seconds``. When a bucket ends, its count updates the
    address's baseline (an exponentially weighted mean with weight ``alpha``; empty buckets in
    between count as zero) and the population's baseline, unless the bucket was a flood, so an
    attack does not teach the detector that floods are normal. A bucket is a flood when its count
    reaches ``max(floor, factor * baseline)``, with the address's own baseline once it has one and
    the population's before. Fires ``flood.address`` (HIGH) at most once per ``cooldown_seconds``
    per address. Only :attr:`ObservationKind.CALL` observations count (an access-log feed).
    Defaults: 10 s buckets, floor 200 calls (20/s), factor 10, alpha 0.2, cooldown 60 s.
    """

    def __init__(
        self,
        *,
        bucket_seconds: float = 10.0,
        floor: int = 200,
        factor: float = 10.0,
        alpha: float = 0.2,
        cooldown_seconds: float = 60.0,
        max_keys: int = MAX_KEYS,
    ):
        self.bucket_seconds = bucket_seconds
        self.floor = floor
        self.factor = factor
        self.alpha = alpha
        self.cooldown_seconds = cooldown_seconds
        self.population_baseline = 0.0
        self._rates: BoundedMap[str, _Rate] = BoundedMap(max_keys, _Rate)

    def threshold(self, address: str) -> float:
        """The calls per bucket that make a flood from ``address`` now."""
        rate = self._rates.get(address)
        baseline = (
            rate.baseline if rate is not None and rate.baseline is not None else self.population_baseline
        )
        return max(float(self.floor), self.factor * baseline)

    def _learn(self, rate: _Rate, bucket: int) -> None:
        """Folds the ended bucket (and the empty ones since) into the baselines."""
        if rate.bucket < 0:
            return
        if not rate.flooded:
            if rate.baseline is None:
                rate.baseline = float(rate.count)
            else:
                rate.baseline += self.alpha * (rate.count - rate.baseline)
            self.population_baseline += self.alpha * (rate.count - self.population_baseline)
        empty = bucket - rate.bucket - 1
        if empty > 0 and rate.baseline is not None:
            rate.baseline *= (1 - self.alpha) ** min(empty, 1000)

    def observe(self, observation: Observation, now: float) -> list[Detection]:
        """Counts a call against its address's current bucket."""
        if observation.kind is not ObservationKind.CALL or not observation.source_address:
            return []
        rate = self._rates.touch(observation.source_address)
        bucket = int(now // self.bucket_seconds)
        if bucket != rate.bucket:
            self._learn(rate, bucket)
            rate.bucket, rate.count, rate.flooded = bucket, 0, False
        rate.count += 1
        threshold = self.threshold(observation.source_address)
        if rate.count < threshold or rate.flooded:
            return []  # below, or this bucket already counted as a flood
        rate.flooded = True
        if now - rate.fired_at < self.cooldown_seconds:
            return []
        rate.fired_at = now
        return [
            _detection(
                "flood.address",
                Category.FLOOD,
                Severity.HIGH,
                observation,
                f"{rate.count} calls from {observation.source_address} within "
                f"{self.bucket_seconds:g} s; threshold {threshold:g} (baseline "
                f"{(rate.baseline if rate.baseline is not None else self.population_baseline):.1f})",
                now,
            )
        ]


class ScanningDetector:
    """Bursts of NOT_FOUND, UNIMPLEMENTED and PERMISSION_DENIED from one address.

    Fires ``scanning.address`` (MEDIUM) when one address collects ``threshold`` such refusals within
    ``window_seconds`` spread over at least ``min_methods`` methods, or ``5 * threshold`` on any
    methods (one method probed with many ids). Counts :attr:`ObservationKind.CALL` observations
    with one of :data:`SCAN_STATUSES` and reported :attr:`ObservationKind.PERMISSION_DENIED` events.
    Defaults: 20 refusals in 60 s over 3 methods, or 100 on any.
    """

    def __init__(
        self,
        *,
        window_seconds: float = 60.0,
        threshold: int = 20,
        min_methods: int = 3,
        max_keys: int = MAX_KEYS,
    ):
        self.window_seconds = window_seconds
        self.threshold = threshold
        self.min_methods = min_methods
        self._refusals: BoundedMap[str, EventWindow] = BoundedMap(
            max_keys, lambda: EventWindow(window_seconds, 5 * threshold)
        )
        self._methods: BoundedMap[str, DistinctWindow] = BoundedMap(
            max_keys, lambda: DistinctWindow(window_seconds, max(min_methods, 8))
        )

    def observe(self, observation: Observation, now: float) -> list[Detection]:
        """Counts a refusal against its address."""
        refused = observation.kind is ObservationKind.PERMISSION_DENIED or (
            observation.kind is ObservationKind.CALL and observation.status in SCAN_STATUSES
        )
        if not refused or not observation.source_address:
            return []
        window = self._refusals.touch(observation.source_address)
        count = window.add(now)
        methods_window = self._methods.touch(observation.source_address)
        methods = methods_window.add(observation.method or "?", now)
        if count < self.threshold or (methods < self.min_methods and count < 5 * self.threshold):
            return []
        if not window.may_fire(now):
            return []
        shown = ", ".join(printable(m, 80) for m in methods_window.values()[-3:])
        return [
            _detection(
                "scanning.address",
                Category.SCANNING,
                Severity.MEDIUM,
                observation,
                f"{count} refused calls (NOT_FOUND, UNIMPLEMENTED, PERMISSION_DENIED) from "
                f"{observation.source_address} within {self.window_seconds:g} s over {methods}"
                f"{'+' if methods >= max(self.min_methods, 8) else ''} methods (latest: {shown})",
                now,
            )
        ]


class TokenAbuseDetector:
    """Invalid and forged tokens per address, and replayed refresh tokens.

    Fires ``token.invalid_burst`` (MEDIUM) when one address presents ``invalid`` bad tokens within
    ``window_seconds`` (expired ones included: a client stuck with a stale token looks the same
    below the threshold), ``token.forged`` (HIGH) when ``forged`` of them failed their signature
    (a signature does not fail by accident), and ``token.refresh_replayed`` (HIGH) on every replayed
    refresh token (at most once per window per account): a stolen token, or a client racing
    itself. Defaults: 10 invalid or 3 forged in 300 s.
    """

    def __init__(
        self,
        *,
        window_seconds: float = 300.0,
        invalid: int = 10,
        forged: int = 3,
        max_keys: int = MAX_KEYS,
    ):
        self.window_seconds = window_seconds
        self.invalid = invalid
        self.forged = forged
        self._invalid: BoundedMap[str, EventWindow] = BoundedMap(
            max_keys, lambda: EventWindow(window_seconds, invalid)
        )
        self._forged: BoundedMap[str, EventWindow] = BoundedMap(
            max_keys, lambda: EventWindow(window_seconds, forged)
        )
        self._replays: BoundedMap[str, EventWindow] = BoundedMap(
            max_keys, lambda: EventWindow(window_seconds, 1)
        )

    def observe(self, observation: Observation, now: float) -> list[Detection]:
        """Counts invalid tokens per address; reports replayed refresh tokens."""
        address = observation.source_address
        if observation.kind is ObservationKind.TOKEN_REPLAYED:
            window = self._replays.touch(f"{_account(observation.principal)}\x00{address}")
            window.add(now)
            if not window.may_fire(now):
                return []
            return [
                _detection(
                    "token.refresh_replayed",
                    Category.TOKEN_ABUSE,
                    Severity.HIGH,
                    observation,
                    f"a spent refresh token of {printable(observation.principal, 64)!r} was presented again "
                    f"from {address}; its family was revoked",
                    now,
                )
            ]
        if observation.kind is not ObservationKind.TOKEN_INVALID or not address:
            return []
        found: list[Detection] = []
        if "signature" in observation.detail.lower():
            window = self._forged.touch(address)
            count = window.add(now)
            if count >= self.forged and window.may_fire(now):
                found.append(
                    _detection(
                        "token.forged",
                        Category.TOKEN_ABUSE,
                        Severity.HIGH,
                        observation,
                        f"{count} tokens with bad signatures from {address} within {self.window_seconds:g} s",
                        now,
                    )
                )
        window = self._invalid.touch(address)
        count = window.add(now)
        if count >= self.invalid and window.may_fire(now):
            found.append(
                _detection(
                    "token.invalid_burst",
                    Category.TOKEN_ABUSE,
                    Severity.MEDIUM,
                    observation,
                    f"{count} invalid tokens from {address} within {self.window_seconds:g} s "
                    f"(latest: {printable(observation.detail, 80)})",
                    now,
                )
            )
        return found


def default_detectors() -> list[Detector]:
    """One of each behavioural detector with its default thresholds."""
    return [
        BruteForceDetector(),
        CredentialStuffingDetector(),
        FloodDetector(),
        ScanningDetector(),
        TokenAbuseDetector(),
    ]
