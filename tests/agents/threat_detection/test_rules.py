"""The screening rules as data: each rule catches its examples and flags none of the near misses,
and ordinary text of the platform (apostrophes, "drop by", "ping me", Hindi, prices) passes every rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bhiv_core.agents.threat_detection.detection import Severity
from bhiv_core.agents.threat_detection.rules import FAMILIES, Rule, RuleError, load_rules, parse_rules
from bhiv_core.agents.threat_detection.screening import Screener, ScreeningError

RULES = load_rules()
SCREENER = Screener(RULES)

ORDINARY = (
    "What's dharma?",
    "O'Brien",
    "I'm O'Brien and I'd like to drop by tomorrow",
    "drop by",
    "Feel free to drop by the office",
    "select the best option",
    "Please select the best option for me",
    "ping me",
    "Ping me when it's shipped",
    "tell me more",
    "Tell me more about the Vedas",
    "shipping_address",
    '{"shipping_address": "12 MG Road", "ping_interval": 30, "drop_shipping": false}',
    "धर्म क्या है?",
    "कृपया मेरा ऑर्डर जाँचें",
    "ஆயுர்வேதம் என்றால் என்ன?",
    "¿Dónde está mi pedido?",
    "ダルマとは何ですか",
    "₹1,499 + ₹99 = ₹1,598",
    "$20 or $25?",
    "2 + 2 = 4",
    "(3 * 4) / 2 = 6",
    "15% off above ₹5,000",
    "Model X-9000/Pro",
    "SKU AYU-TRI-250G",
    "api_v2.client.get_orders()",
    "C++ for Beginners",
    "Node.js & React Combo",
    "SELECT Series Massage Oil",
    "Union Jack tote bag",
)


def _ids(text: str) -> list[str]:
    return [finding.rule.id for finding in SCREENER.screen(text)]


def test_every_family_has_rules_and_every_rule_has_examples() -> None:
    assert {rule.family for rule in RULES} == FAMILIES
    assert all(rule.catch and rule.allow for rule in RULES)
    assert len({rule.id for rule in RULES}) == len(RULES)


@pytest.mark.parametrize(
    ("rule", "payload"), [(rule, text) for rule in RULES for text in rule.catch], ids=lambda v: str(v)[:40]
)
def test_rule_catches_its_examples(rule: Rule, payload: str) -> None:
    assert rule.id in _ids(payload)


@pytest.mark.parametrize(
    ("rule", "text"), [(rule, text) for rule in RULES for text in rule.allow], ids=lambda v: str(v)[:40]
)
def test_rule_near_misses_pass_every_rule(rule: Rule, text: str) -> None:
    assert _ids(text) == []


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_passes_every_rule(text: str) -> None:
    assert _ids(text) == []


def test_apostrophes_are_not_sql_injection() -> None:
    assert _ids("What's dharma?") == []
    assert _ids("O'Brien") == []
    assert "sql.quote_tautology" in _ids("O'Brien' OR '1'='1")


def test_a_finding_names_its_field_and_shows_the_match() -> None:
    [finding] = SCREENER.screen("Deliver to <script src=//evil.example>", "shipment.address")
    assert finding.rule.id == "xss.script_tag"
    assert finding.field == "shipment.address"
    assert finding.excerpt.endswith("<script")
    detection = finding.detection(source_address="203.0.113.7", principal="", method="/m/M", time=1.0)
    assert detection.severity is Severity.HIGH
    assert "field shipment.address" in detection.evidence


def test_a_pattern_hyperscan_cannot_compile_fails_the_screener_naming_the_rule() -> None:
    bad = Rule("sql.backref", "sql", Severity.LOW, r"(a)\1", "a backreference", ("aa",), ())
    with pytest.raises(ScreeningError, match=r"sql\.backref"):
        Screener([*RULES, bad])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "no \\[\\[rule\\]\\]"),
        ({"rule": [{"id": "x.y", "family": "x"}]}, "family must be one of"),
        ({"rule": [{"id": "sql.a", "family": "xss"}]}, "must start with its family"),
        (
            {"rule": [{"id": "sql.a", "family": "sql", "severity": "huge"}]},
            "severity must be",
        ),
        (
            {"rule": [{"id": "sql.a", "family": "sql", "severity": "low", "catch": []}]},
            "at least one catch",
        ),
    ],
)
def test_malformed_rules_are_refused_with_the_rule_named(document: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_rules(document)


def test_rules_load_from_a_given_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        "[[rule]]\nid = 'ssrf.x'\nfamily = 'ssrf'\nseverity = 'low'\ndescription = 'd'\n"
        "pattern = 'internal\\.example'\ncatch = ['internal.example']\n",
        encoding="utf-8",
    )
    [rule] = load_rules(path)
    assert Screener([rule]).screen("http://internal.example/")[0].rule.id == "ssrf.x"
