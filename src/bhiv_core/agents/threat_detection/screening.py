"""Injection screening: every rule compiled into one Hyperscan database, one pass per field form.

Hyperscan compiles the rules into automata that read each byte once, so screening is linear in the
input whatever the patterns or the input (no backtracking, unlike Python's ``re``, which never sees
request data here); a rule Hyperscan cannot compile fails :class:`Screener` at start. The engine is
the ``hyperscan`` wheel (libhs built in): one scan reports every matching rule, where RE2 would need
a scan per rule or a set without positions.

A field is screened in up to four forms, all computed in linear time and none with ``re``: as sent;
NFKC-normalised when it is not ASCII (a fullwidth bracket, U+FF1C, reads as ``<``); and
percent-decoded once and twice (``+`` read as a space), for payloads sent URL-encoded or
double-encoded.

A :class:`Screener` is not thread-safe (Hyperscan's scratch space is per database): use one per
thread, or one on the event loop, as the detection agent does.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import hyperscan

from bhiv_core.agents.threat_detection.detection import Category, Detection, printable
from bhiv_core.agents.threat_detection.rules import Rule, load_rules

__all__ = ["Finding", "Screener", "ScreeningError", "message_text_fields", "shared_screener"]

_FLAGS = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_DOTALL
"""Caseless, one report per rule and scan (a field is flagged once per rule), '.' spans lines."""

_EXCERPT = 80
"""Characters of the matched form kept as evidence, ending where the rule matched."""


class ScreeningError(ValueError):
    """A rule's pattern is not a valid Hyperscan expression (the message names the rule)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule matched a field.

    Attributes:
        rule: The rule.
        field: The field's path (``customer.notes``), empty for a bare text.
        excerpt: Up to 80 printable characters of the field's matched form, ending at the match.
        context: Up to ``context`` characters of the matched form as they are (control characters
            kept), ending at the match, when :meth:`Screener.screen` was asked for it; else empty.
            What a service reports, so that sentinel can screen it again.

    """

    rule: Rule
    field: str
    excerpt: str
    context: str = ""

    def detection(self, *, source_address: str, principal: str, method: str, time: float) -> Detection:
        """The finding as an injection detection of the given call."""
        where = f"field {self.field}: " if self.field else ""
        return Detection(
            rule_id=self.rule.id,
            category=Category.INJECTION,
            severity=self.rule.severity,
            source_address=source_address,
            principal=principal,
            method=method,
            evidence=f"{self.rule.description}; {where}…{self.excerpt}",
            time=time,
        )


def _forms(text: str) -> list[bytes]:
    """The distinct forms of ``text`` to scan, each computed in linear time."""
    raw = text.encode("utf-8", "replace")
    forms = [raw]
    if not raw.isascii():
        folded = unicodedata.normalize("NFKC", text).encode("utf-8", "replace")
        if folded != raw:
            forms.append(folded)
    current = forms[-1]
    # unquote_to_bytes splits on '%' and maps each two-digit head with a table: linear, no regex.
    for _ in range(2):
        if b"%" not in current and b"+" not in current:
            break
        decoded = unquote_to_bytes(current.replace(b"+", b" "))
        if decoded == current:
            break
        if not decoded.isascii():
            decoded = unicodedata.normalize("NFKC", decoded.decode("utf-8", "replace")).encode(
                "utf-8", "replace"
            )
        forms.append(decoded)
        current = decoded
    return forms


class Screener:
    """Screens text fields against injection rules in one linear-time Hyperscan pass per form.

    Args:
        rules: The rules; by default the ones shipped with the package (``rules.toml``).

    Raises:
        ScreeningError: A pattern does not compile (named in the message).

    """

    def __init__(self, rules: Sequence[Rule] | None = None):
        self.rules: tuple[Rule, ...] = tuple(load_rules() if rules is None else rules)
        self._database = hyperscan.Database()
        try:
            self._database.compile(
                expressions=[rule.pattern.encode() for rule in self.rules],
                ids=list(range(len(self.rules))),
                elements=len(self.rules),
                flags=[_FLAGS] * len(self.rules),
            )
        except hyperscan.error as exc:
            # The set compile reports no index: compile each alone to name the bad one (only
            # then, as it costs four times the set's compile).
            for rule in self.rules:
                try:
                    hyperscan.Database().compile(expressions=[rule.pattern.encode()], ids=[0], flags=[_FLAGS])
                except hyperscan.error as alone:
                    raise ScreeningError(f"rule {rule.id}: {alone}") from None
            raise ScreeningError(str(exc)) from None

    def screen(self, text: str, field: str = "", *, context: int = 0) -> list[Finding]:
        """Returns the rules ``text`` matches (each once, in rule order), in time linear in ``text``.

        Args:
            text: The text.
            field: The field's path, named by the findings.
            context: When positive, each finding keeps up to this many bytes of the matched form,
                ending at the match, as they are (:attr:`Finding.context`).

        """
        hits: dict[int, bytes] = {}
        keep = max(_EXCERPT, context)
        for form in _forms(text):

            def on_match(rule: int, start: int, end: int, flags: int, _: Any, form: bytes = form) -> None:
                if rule not in hits:
                    hits[rule] = form[max(0, end - keep) : end]

            self._database.scan(form, match_event_handler=on_match)
            if len(hits) == len(self.rules):
                break
        found = []
        for i in sorted(hits):
            raw = hits[i]
            found.append(
                Finding(
                    self.rules[i],
                    field,
                    printable(raw[-_EXCERPT:].decode("utf-8", "replace"), _EXCERPT),
                    raw.decode("utf-8", "replace") if context > 0 else "",
                )
            )
        return found

    def screen_fields(self, fields: Iterable[tuple[str, str]], *, context: int = 0) -> list[Finding]:
        """Screens every ``(path, text)`` pair; the findings name their field."""
        return [finding for path, text in fields for finding in self.screen(text, path, context=context)]


_shared = threading.local()


def shared_screener() -> Screener:
    """Returns the calling thread's :class:`Screener` of the shipped rules, compiled on first use.

    Every server of a process runs on one event loop thread, so its concerns share one compiled
    database (~0.2 s to compile) instead of compiling it per server.
    """
    screener: Screener | None = getattr(_shared, "screener", None)
    if screener is None:
        screener = _shared.screener = Screener()
    return screener


def message_text_fields(
    message: Any, *, max_fields: int = 1000, max_depth: int = 16
) -> list[tuple[str, str]]:
    """The string fields of a protobuf message, nested, repeated and map values included.

    Returns ``(path, value)`` pairs (``shipment.address.line1``, ``tags[2]``, ``labels[env]``) for
    non-empty strings, at most ``max_fields`` of them and no deeper than ``max_depth``, so walking a
    hostile message costs at most its size.
    """
    found: list[tuple[str, str]] = []

    def walk(msg: Any, prefix: str, depth: int) -> None:
        if depth > max_depth:
            return
        for descriptor, value in msg.ListFields():
            if len(found) >= max_fields:
                return
            path = f"{prefix}{descriptor.name}"
            if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
                value_field = descriptor.message_type.fields_by_name["value"]
                for key, item in value.items():
                    _visit(value_field, item, f"{path}[{key}]", depth)
            elif descriptor.is_repeated:
                for index, item in enumerate(value):
                    _visit(descriptor, item, f"{path}[{index}]", depth)
            else:
                _visit(descriptor, value, path, depth)

    def _visit(descriptor: Any, value: Any, path: str, depth: int) -> None:
        if len(found) >= max_fields:
            return
        if descriptor.type == descriptor.TYPE_STRING:
            if value:
                found.append((path, value))
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            walk(value, path + ".", depth + 1)

    walk(message, "", 0)
    return found
