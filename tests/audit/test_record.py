from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from bhiv_core.audit import record as record_module
from bhiv_core.audit.record import (
    GENESIS_HASH,
    RESOURCE_LIMIT,
    TEXT_LIMIT,
    AuditEntry,
    AuditRecord,
    ChainBreak,
    ChainVerifier,
    bounded,
    cap_text,
    from_micros,
    seal,
    seal_batch,
    to_micros,
)
from tests.audit.support import entry

TEXT_FIELDS = (
    "service",
    "principal",
    "role",
    "method",
    "resource",
    "outcome_code",
    "client_address",
    "trace_id",
)


def as_entry(record: AuditRecord) -> AuditEntry:
    return AuditEntry(*record[1:12])


def chain_of(entries: list[AuditEntry]) -> list[AuditRecord]:
    records, prev = [], GENESIS_HASH
    for i, item in enumerate(entries, start=1):
        record = seal(item, i, prev)
        records.append(record)
        prev = record.hash
    return records


def chain(count: int) -> list[AuditRecord]:
    return chain_of([entry(f"users/u{i}") for i in range(1, count + 1)])


def test_hash_is_sha256_of_the_compact_json_array_of_every_field_but_hash() -> None:
    record = seal(entry(time=datetime(2026, 11, 2, 8, 30, 0, 123456, tzinfo=UTC)), 1, GENESIS_HASH)
    content = json.loads(record.canonical())
    assert content == list(record[:-1])
    assert dict(zip(AuditRecord._fields, content, strict=False))["time_us"] == 1_793_608_200_123_456
    assert content[-1] == "0" * 64
    assert record.canonical() == json.dumps(content, separators=(",", ":")).encode()
    assert record.hash == hashlib.sha256(record.canonical()).hexdigest()


def test_canonical_form_is_ascii_whatever_the_text() -> None:
    record = seal(entry("users/zoë\u2028"), 1, GENESIS_HASH)
    assert record.canonical().isascii()
    assert json.loads(record.canonical())[3] == "users/zoë\u2028"


@pytest.mark.parametrize(
    "fields",
    [
        (1, 2, 'quote " back \\ slash', "zoë\u2028\x00\n", "", -0.0, 1e-7, 123456.789, 10**20, True, None),
        (0.1 + 0.2, 1.5e300, -7, "\ud800"),
    ],
)
def test_the_prebuilt_encoder_writes_exactly_what_jsonencoder_writes(fields: tuple[object, ...]) -> None:
    reference = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    assert record_module._encode(fields) == reference.encode(fields)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_encoder_refuses_what_json_cannot_carry_exactly(value: float) -> None:
    with pytest.raises(ValueError):
        record_module._encode((1, value))
    with pytest.raises(TypeError):
        record_module._encode((1, object()))


def test_a_batch_seals_like_one_record_at_a_time() -> None:
    entries = [entry(f"users/u{i}") for i in range(1, 4)]
    assert seal_batch(entries, 0, GENESIS_HASH) == chain_of(entries)


@pytest.mark.parametrize(
    "field,value",
    [
        ("sequence", 2),
        ("time_us", 1_577_836_800_000_000),
        ("service", "llm"),
        ("principal", "users/mallory"),
        ("role", "admin"),
        ("method", "/bhiv.crm.v1.CustomerService/DeleteCustomer"),
        ("resource", "customers/c2"),
        ("outcome_code", "PERMISSION_DENIED"),
        ("outcome_code_number", 7),
        ("client_address", "203.0.113.7"),
        ("trace_id", ""),
        ("duration_ms", 9.0),
        ("prev_hash", "f" * 64),
    ],
)
def test_changing_any_field_changes_the_hash(field: str, value: object) -> None:
    record = seal(entry(), 1, GENESIS_HASH)
    assert record._replace(**{field: value}).computed_hash() != record.hash


def test_seal_truncates_to_what_stores_keep_exactly() -> None:
    record = seal(entry(duration_ms=1.23456789), 1, GENESIS_HASH)
    assert record.duration_ms == 1.235
    assert from_micros(to_micros(record.time)) == record.time


def test_naive_times_are_utc() -> None:
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1)) == 1_000_000


def test_verifier_accepts_an_intact_chain() -> None:
    records = chain(3)
    verifier = ChainVerifier(1, 3, GENESIS_HASH, (3, records[-1].hash))
    assert all(verifier.feed(r) for r in records)
    result = verifier.finish()
    assert (result.ok, result.checked, result.reason, result.start_sequence, result.end_sequence) == (
        True,
        3,
        None,
        1,
        3,
    )


def test_verifier_reports_a_record_whose_hash_differs_from_its_checkpoint() -> None:
    records = chain(3)
    anchored = ChainVerifier(1, 3, GENESIS_HASH, anchors={2: records[1].hash})
    assert all(anchored.feed(r) for r in records) and anchored.finish().ok
    forged = ChainVerifier(1, 3, GENESIS_HASH, anchors={2: "f" * 64})
    assert forged.feed(records[0]) and not forged.feed(records[1])
    result = forged.finish()
    assert (result.ok, result.first_broken_sequence, result.reason, result.checked) == (
        False,
        2,
        ChainBreak.CHECKPOINT_MISMATCH,
        2,
    )


def test_verifier_reports_a_gap_at_the_first_missing_sequence() -> None:
    records = chain(4)
    verifier = ChainVerifier(1, 4, GENESIS_HASH)
    assert verifier.feed(records[0])
    assert not verifier.feed(records[2])
    result = verifier.finish()
    assert (result.ok, result.first_broken_sequence, result.reason, result.checked) == (
        False,
        2,
        ChainBreak.SEQUENCE_GAP,
        1,
    )


def test_verifier_reports_a_missing_tail_as_a_gap() -> None:
    records = chain(3)
    verifier = ChainVerifier(1, 3, GENESIS_HASH)
    verifier.feed(records[0])
    verifier.feed(records[1])
    result = verifier.finish()
    assert (result.first_broken_sequence, result.reason) == (3, ChainBreak.SEQUENCE_GAP)


def test_verifier_catches_a_rehashed_last_record_through_the_head() -> None:
    records = chain(2)
    forged = seal(entry("users/mallory"), 2, records[0].hash)
    verifier = ChainVerifier(1, 2, GENESIS_HASH, (2, records[1].hash))
    assert verifier.feed(records[0]) and verifier.feed(forged)
    result = verifier.finish()
    assert (result.ok, result.first_broken_sequence, result.reason) == (False, 2, ChainBreak.HASH_MISMATCH)


def test_verifier_catches_records_added_behind_the_head() -> None:
    records = chain(3)
    verifier = ChainVerifier(1, 3, GENESIS_HASH, (2, records[1].hash))
    assert all(verifier.feed(r) for r in records)
    result = verifier.finish()
    assert (result.first_broken_sequence, result.reason) == (3, ChainBreak.PREV_HASH_MISMATCH)


def test_unreadable_row_is_a_hash_mismatch() -> None:
    verifier = ChainVerifier(1, 1, GENESIS_HASH)
    assert not verifier.feed_unreadable(1, "duration_ms is str")
    result = verifier.finish()
    assert (result.first_broken_sequence, result.reason, result.checked) == (1, ChainBreak.HASH_MISMATCH, 1)


# --- text caps ------------------------------------------------------------------------------------


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def test_a_long_text_keeps_its_head_and_says_how_long_it_was() -> None:
    capped = cap_text("customers/" + "x" * 4_194_294, TEXT_LIMIT)
    assert utf8_size(capped) == TEXT_LIMIT
    assert capped.endswith("\u2026[truncated from 4194304 bytes]")
    assert capped.startswith("customers/xxx")


@pytest.mark.parametrize("char", ["a", "é", "\u20ac", "\U0001f600", "\ud800"])
@pytest.mark.parametrize("count", [300, 301, 302, 303, 5000])
def test_a_capped_text_ends_on_a_character_boundary_and_fills_the_cap(char: str, count: int) -> None:
    value = "n" * (count % 4) + char * count
    capped = cap_text(value, TEXT_LIMIT)
    head, marker, original = capped.partition("\u2026[truncated from ")
    assert value.startswith(head)
    assert (marker, original) == ("\u2026[truncated from ", f"{utf8_size(value)} bytes]")
    assert TEXT_LIMIT - 3 <= utf8_size(capped) <= TEXT_LIMIT


@pytest.mark.parametrize(
    "value",
    ["", "a" * TEXT_LIMIT, "é" * (TEXT_LIMIT // 2), "\U0001f600" * (TEXT_LIMIT // 4), "n" + "é" * 127],
)
def test_a_text_within_the_cap_is_kept_as_it_is(value: str) -> None:
    assert cap_text(value, TEXT_LIMIT) is value


@pytest.mark.parametrize("value", ["a" * (TEXT_LIMIT + 1), "é" * (TEXT_LIMIT // 2) + "a"])
def test_a_text_one_byte_over_the_cap_is_capped(value: str) -> None:
    assert cap_text(value, TEXT_LIMIT).endswith(f"[truncated from {TEXT_LIMIT + 1} bytes]")


def test_an_entry_that_fits_is_returned_unchanged() -> None:
    item = entry(resource="r" * RESOURCE_LIMIT, method="/" + "m" * (TEXT_LIMIT - 1))
    assert bounded(item) is item


def test_sealing_caps_every_text_field_and_hashes_what_it_stores() -> None:
    huge = "\u00e9" * 2_000_000  # 4 MB in UTF-8
    item = AuditEntry(
        time_us=1,
        service=huge,
        principal=huge,
        role=huge,
        method="/" + huge,
        resource="customers/" + huge,
        outcome_code=huge,
        outcome_code_number=16,
        client_address=huge,
        trace_id=huge,
        duration_ms=1.0,
    )
    record = seal(item, 1, GENESIS_HASH)
    limits = {name: RESOURCE_LIMIT if name == "resource" else TEXT_LIMIT for name in TEXT_FIELDS}
    over = [name for name, limit in limits.items() if utf8_size(getattr(record, name)) > limit]
    assert over == []
    assert RESOURCE_LIMIT - 3 <= utf8_size(record.resource) <= RESOURCE_LIMIT
    assert record.resource.startswith("customers/\u00e9")
    assert record.resource.endswith(f"[truncated from {utf8_size(item.resource)} bytes]")
    assert record.hash == record.computed_hash()
    assert len(record.canonical()) < 8 * 1024  # one record, whatever the request held
    assert bounded(item) == as_entry(record)


def test_the_audit_interceptor_and_the_store_cap_alike() -> None:
    item = entry(resource="customers/" + "x" * 100_000)
    assert seal_batch([bounded(item)], 0, GENESIS_HASH) == seal_batch([item], 0, GENESIS_HASH)
