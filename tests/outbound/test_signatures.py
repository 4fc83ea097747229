"""The webhook signature scheme: what verifies and what must not."""

from __future__ import annotations

from bhiv_core.outbound.signatures import sign, signature_digest, verify_signature

SECRET = b"s" * 32
BODY = b'{"id":"e1","type":"crm.ticket.resolved"}'


def test_a_signature_verifies_within_the_window_only() -> None:
    header = sign(SECRET, 1_000, BODY)
    assert header.startswith("t=1000,v1=")
    assert verify_signature(SECRET, header, BODY, now=1_000 + 300)
    assert not verify_signature(SECRET, header, BODY, now=1_000 + 301)
    assert not verify_signature(SECRET, header, BODY, now=1_000 - 301)


def test_another_body_secret_or_timestamp_does_not_verify() -> None:
    header = sign(SECRET, 1_000, BODY)
    assert not verify_signature(SECRET, header, BODY + b" ", now=1_000)
    assert not verify_signature(b"t" * 32, header, BODY, now=1_000)
    moved = header.replace("t=1000", "t=1001")
    assert not verify_signature(SECRET, moved, BODY, now=1_000)


def test_any_of_several_v1_entries_verifies_during_a_rotation() -> None:
    old = signature_digest(b"o" * 32, 1_000, BODY)
    header = f"t=1000,v1={old},v1={signature_digest(SECRET, 1_000, BODY)}"
    assert verify_signature(SECRET, header, BODY, now=1_000)
    assert verify_signature(b"o" * 32, header, BODY, now=1_000)


def test_malformed_headers_are_refused() -> None:
    for header in ("", "t=abc,v1=00", "v1=00", "t=1000", "t=1000,v1=" + "0" * 5000):
        assert not verify_signature(SECRET, header, BODY, now=1_000)
