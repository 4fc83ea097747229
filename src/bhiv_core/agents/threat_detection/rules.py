"""Injection screening rules as data: ``rules.toml`` beside this module, loaded and checked here.

A rule is an id, a family, a severity, a Hyperscan pattern, a description and the examples it must
catch and must not flag (run by the tests). Loading checks the shape only; whether the patterns
compile is the engine's check (:class:`~bhiv_core.agents.threat_detection.screening.Screener`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bhiv_core.agents.threat_detection.detection import Severity

__all__ = ["FAMILIES", "RULES_FILE", "Rule", "RuleError", "load_rules", "parse_rules"]

RULES_FILE = "rules.toml"
"""The rules shipped with the package, beside this module."""

FAMILIES = frozenset({"sql", "nosql", "xss", "traversal", "cmd", "ssti", "jndi", "crlf", "ssrf"})
"""The injection families a rule may belong to."""


class RuleError(ValueError):
    """A rules file is malformed; the message names the rule and the field."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One screening rule.

    Attributes:
        id: ``<family>.<name>``, unique, such as ``sql.union_select``.
        family: One of :data:`FAMILIES`.
        severity: How serious a match is.
        pattern: A Hyperscan expression, matched caselessly.
        description: What the rule recognises, for a person.
        catch: Payloads it must flag.
        allow: Near misses it must not flag.

    """

    id: str
    family: str
    severity: Severity
    pattern: str
    description: str
    catch: tuple[str, ...]
    allow: tuple[str, ...]


def _strings(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise RuleError(f"{where}: {key} must be a non-empty string")
    return value


def parse_rules(document: Mapping[str, Any]) -> tuple[Rule, ...]:
    """Builds the rules of a parsed TOML document (``[[rule]]`` tables).

    Raises:
        RuleError: A missing or mistyped field, an unknown family or severity, an id that does not
            start with its family, a duplicate id, or a rule without a catch example.

    """
    entries = document.get("rule")
    if not isinstance(entries, list) or not entries:
        raise RuleError("the rules file has no [[rule]] tables")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"rule {index + 1}"
        rule_id = _text(entry, "id", where)
        where = f"rule {rule_id}"
        family = _text(entry, "family", where)
        if family not in FAMILIES:
            raise RuleError(f"{where}: family must be one of {sorted(FAMILIES)}")
        if not rule_id.startswith(family + "."):
            raise RuleError(f"{where}: id must start with its family ({family}.)")
        if rule_id in seen:
            raise RuleError(f"{where}: duplicate id")
        seen.add(rule_id)
        severity_name = _text(entry, "severity", where)
        try:
            severity = Severity[severity_name.upper()]
        except KeyError:
            raise RuleError(f"{where}: severity must be low, medium, high or critical") from None
        catch = _strings(entry, "catch", where)
        if not catch:
            raise RuleError(f"{where}: needs at least one catch example")
        rules.append(
            Rule(
                id=rule_id,
                family=family,
                severity=severity,
                pattern=_text(entry, "pattern", where),
                description=_text(entry, "description", where),
                catch=catch,
                allow=_strings(entry, "allow", where),
            )
        )
    return tuple(rules)


def load_rules(path: Path | None = None) -> tuple[Rule, ...]:
    """Loads the rules of ``path``, or the rules shipped with the package.

    Raises:
        RuleError: The file is malformed (see :func:`parse_rules`).

    """
    if path is not None:
        text = path.read_text(encoding="utf-8")
    else:
        text = resources.files(__package__ or __name__).joinpath(RULES_FILE).read_text(encoding="utf-8")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{path or RULES_FILE}: {exc}") from None
    return parse_rules(document)
