"""The response policy as data: ``policy.toml`` beside this module, loaded and checked here.

One entry per threat category and severity (all of them: a gap fails the load) says whether an
incident of that category at that severity blocks its source addresses (with a base TTL), raises
an alert, both, or is only recorded. Repeat offenders get longer blocks: the base TTL times
``factor`` per earlier block of the same address within the escalation window, capped.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from bhiv_core.agents.threat_detection import Category, Severity

__all__ = [
    "POLICY_FILE",
    "Escalation",
    "PolicyEntry",
    "PolicyError",
    "ResponsePolicy",
    "format_duration",
    "load_policy",
    "parse_duration",
    "parse_policy",
]

POLICY_FILE = "policy.toml"
"""The policy shipped with the package, beside this module."""

_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class PolicyError(ValueError):
    """A policy file is malformed; the message names the entry and the field."""


def parse_duration(text: str) -> timedelta:
    """``15m``, ``1h``, ``30s``, ``2d`` as a timedelta.

    Raises:
        PolicyError: Not a positive number followed by s, m, h or d.

    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise PolicyError(f"{text!r} is not a duration such as 30s, 15m, 1h or 2d")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def format_duration(duration: timedelta) -> str:
    """The shortest exact form of a duration: ``15m``, ``1h``, ``90s``, ``1h30m``."""
    seconds = max(int(duration.total_seconds()), 0)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """What to do for one category at one severity.

    Attributes:
        category: The threat category.
        severity: The incident's highest severity.
        block: Block the incident's source addresses.
        ttl: The base block duration (before escalation); None when ``block`` is False.
        alert: Raise an alert.

    """

    category: Category
    severity: Severity
    block: bool
    ttl: timedelta | None
    alert: bool

    @property
    def response(self) -> str:
        """``block``, ``block+alert``, ``alert`` or ``record``, for docs and logs."""
        actions = [a for a, on in (("block", self.block), ("alert", self.alert)) if on]
        return "+".join(actions) or "record"


@dataclass(frozen=True, slots=True)
class Escalation:
    """How blocks of repeat offenders grow.

    Attributes:
        window: Earlier blocks of the same address within this window count.
        factor: The TTL is multiplied by this per earlier block.
        max_ttl: No block is longer.

    """

    window: timedelta = timedelta(hours=24)
    factor: int = 2
    max_ttl: timedelta = timedelta(hours=24)

    def ttl(self, base: timedelta, prior_blocks: int) -> timedelta:
        """``base`` escalated for ``prior_blocks`` earlier blocks, capped at :attr:`max_ttl`."""
        # In seconds, capped before a timedelta is made: a persistent offender's product would
        # overflow timedelta (whose limit is 999999999 days).
        steps = min(max(prior_blocks, 0), 64)
        seconds = min(base.total_seconds() * self.factor**steps, self.max_ttl.total_seconds())
        return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class ResponsePolicy:
    """The whole policy: an entry per (category, severity) and the escalation of blocks."""

    entries: Mapping[tuple[Category, Severity], PolicyEntry]
    escalation: Escalation

    def decide(self, category: Category, severity: Severity) -> PolicyEntry:
        """The entry for ``category`` at ``severity`` (every pair has one)."""
        return self.entries[(category, severity)]


def _flag(entry: Mapping[str, Any], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{where}: {key} must be true or false")
    return value


def _escalation(table: Any) -> Escalation:
    if table is None:
        return Escalation()
    if not isinstance(table, dict):
        raise PolicyError("[escalation] must be a table")
    unknown = set(table) - {"window", "factor", "max_ttl"}
    if unknown:
        raise PolicyError(f"[escalation]: unknown keys {sorted(unknown)}")
    factor = table.get("factor", 2)
    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 10:
        raise PolicyError("[escalation]: factor must be an integer from 1 to 10")
    return Escalation(
        window=parse_duration(str(table.get("window", "24h"))),
        factor=factor,
        max_ttl=parse_duration(str(table.get("max_ttl", "24h"))),
    )


def parse_policy(document: Mapping[str, Any]) -> ResponsePolicy:
    """Builds the policy of a parsed TOML document.

    Raises:
        PolicyError: An unknown category, severity or key, a block without a TTL (or a TTL
            without a block), a repeated or missing (category, severity) pair, a bad escalation.

    """
    items = document.get("policy")
    if not isinstance(items, list) or not items:
        raise PolicyError("the policy file has no [[policy]] tables")
    entries: dict[tuple[Category, Severity], PolicyEntry] = {}
    for index, item in enumerate(items):
        where = f"policy {index + 1}"
        if not isinstance(item, dict):
            raise PolicyError(f"{where}: must be a table")
        unknown = set(item) - {"category", "severity", "block", "ttl", "alert"}
        if unknown:
            raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            category = Category(item.get("category"))
        except ValueError:
            raise PolicyError(f"{where}: category must be one of {[c.value for c in Category]}") from None
        try:
            severity = Severity[str(item.get("severity", "")).upper()]
        except KeyError:
            raise PolicyError(f"{where}: severity must be low, medium, high or critical") from None
        where = f"policy {category.value}/{severity.name.lower()}"
        if (category, severity) in entries:
            raise PolicyError(f"{where}: repeated")
        block = _flag(item, "block", where)
        ttl_text = item.get("ttl")
        if block != (ttl_text is not None):
            raise PolicyError(f"{where}: a block needs a ttl, and a ttl needs block = true")
        entries[(category, severity)] = PolicyEntry(
            category=category,
            severity=severity,
            block=block,
            ttl=parse_duration(str(ttl_text)) if ttl_text is not None else None,
            alert=_flag(item, "alert", where),
        )
    missing = [f"{c.value}/{s.name.lower()}" for c in Category for s in Severity if (c, s) not in entries]
    if missing:
        raise PolicyError(f"the policy has no entry for {', '.join(missing)}")
    return ResponsePolicy(entries, _escalation(document.get("escalation")))


def load_policy(path: Path | None = None) -> ResponsePolicy:
    """Loads the policy of ``path``, or the one shipped with the package.

    Raises:
        PolicyError: The file is malformed (see :func:`parse_policy`).

    """
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"{path}: {exc.strerror}") from None
    else:
        text = resources.files(__package__ or __name__).joinpath(POLICY_FILE).read_text(encoding="utf-8")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path or POLICY_FILE}: {exc}") from None
    return parse_policy(document)
