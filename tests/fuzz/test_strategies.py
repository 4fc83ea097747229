"""The fuzzer's own generators: what they write by hand decodes as intended, and every RPC is fuzzed."""

from __future__ import annotations

from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from hypothesis import given, settings
from hypothesis import strategies as st

from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.llm.v1 import completion_service_pb2 as completion
from bhiv_core.registry import SERVICES
from bhiv_core.runtime.contracts import all_services, method_path
from tests.fuzz import wire
from tests.fuzz.strategies import Budget, Header, conforming, header_sets, inflated, slots
from tests.fuzz.test_fuzz import RPCS

BUDGET = Budget(max_body_bytes=64 * 1024, limit=256 * 1024)


@given(st.integers(0, 2**64 - 1))
def test_varints_are_written_as_protobuf_writes_them(value: int) -> None:
    assert wire.varint(value) == _VarintBytes(value)


def test_a_negative_varint_is_its_64_bit_twos_complement() -> None:
    assert wire.varint(-1) == _VarintBytes(2**64 - 1)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_an_inflated_body_decodes_with_every_element_it_claims(data: st.DataObject) -> None:
    request = data.draw(st.sampled_from([completion.CompleteRequest, us.UpdateUserRequest]))
    body = data.draw(inflated(request.DESCRIPTOR, BUDGET))
    unit = body.chunks[-1]
    if unit.data == b"\xff" or body.size > BUDGET.limit:
        return  # meant not to decode (invalid UTF-8) or not to be accepted (past the limit)
    decoded = request.FromString(body.render())
    slot_name, count = body.kind.removeprefix("message with ").split(" * ")
    *path, name = slot_name.split(".")
    found = decoded
    for step in path:
        found = getattr(found, step)
    value = getattr(found, name)
    if found.DESCRIPTOR.fields_by_name[name].is_repeated:
        # Appended to whatever the drawn base message already had there.
        assert len(value) >= int(count) == unit.times
    else:
        # Replacing whatever the base message had: a string or bytes field is its last value.
        assert len(value.encode() if isinstance(value, str) else value) == len(unit.data) * unit.times


def test_every_request_type_with_a_repeated_or_string_field_can_be_inflated() -> None:
    assert {"model", "messages"} <= {s.name for s in slots(completion.CompleteRequest.DESCRIPTOR)}
    assert "update_mask.paths" in [s.name for s in slots(us.UpdateUserRequest.DESCRIPTOR)]


def test_a_header_repeats_its_unit_to_its_length_under_numbered_names() -> None:
    assert Header("x-a", "ab", 5).render() == [("x-a", "ababa")]
    assert Header("x-a-bin", b"\x00", 2, copies=2).render() == [
        ("x-a-0-bin", b"\x00\x00"),
        ("x-a-1-bin", b"\x00\x00"),
    ]


def test_only_fields_an_http2_client_may_send_are_conforming() -> None:
    assert not conforming(Header("connection", "close", 5))
    assert not conforming(Header("upgrade", "b", 1))
    assert not conforming(Header("te", "gzip", 4))
    assert not conforming(Header("host", "gjOVz|IE)d=;:O!&", 16))  # differs from :authority
    assert conforming(Header("te", "trailers", 8))
    assert conforming(Header("connection", "close", 5, copies=50))  # connection-0, connection-1...
    assert conforming(Header("x-a", "a", 1 << 20))


@settings(max_examples=300, deadline=None)
@given(header_sets())
def test_the_fuzzer_sends_no_field_http2_forbids_a_client(headers: tuple[Header, ...]) -> None:
    assert all(conforming(h) for h in headers)


def test_every_rpc_of_every_service_in_the_registry_is_fuzzed() -> None:
    packages = {s.package for s in SERVICES}
    declared = {method_path(m) for s in all_services() if s.file.package in packages for m in s.methods}
    fuzzed = {rpc.path for rpc in RPCS}
    assert declared <= fuzzed
    assert {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"} <= fuzzed
