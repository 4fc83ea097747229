from __future__ import annotations

import dataclasses

import grpc
import pytest
from google.protobuf import duration_pb2, message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv.llm.v1 import completion_service_pb2 as completion
from bhiv.llm.v1 import conversation_pb2 as llm_message
from bhiv.sentinel.v1 import audit_service_pb2 as aus
from bhiv.sentinel.v1 import audit_service_pb2_grpc as aus_grpc
from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv_core.interceptors.validation import ValidationInterceptor, validate
from bhiv_core.runtime.contracts import all_services, method_path
from bhiv_core.runtime.errors import MAX_VIOLATIONS, FieldViolation
from tests.harness import serving


def fields(message) -> set[tuple[str, str]]:
    return {(v.field, v.reason) for v in validate(message)}


def test_valid_request_has_no_violations() -> None:
    assert validate(auth.LoginRequest(username="ada", password="x" * 12)) == []


def test_required_and_length_rules() -> None:
    assert fields(auth.LoginRequest(username="a" * 65)) == {
        ("username", "TOO_LONG"),
        ("password", "REQUIRED"),
    }


def test_pattern_rule_on_resource_name() -> None:
    assert fields(us.GetUserRequest(name="customers/1")) == {("name", "BAD_FORMAT")}
    assert fields(us.GetUserRequest(name="users/1")) == set()


def test_negative_page_size_is_out_of_range() -> None:
    assert fields(us.ListUsersRequest(page_size=-1)) == {("page_size", "OUT_OF_RANGE")}
    assert fields(us.ListUsersRequest(page_size=0)) == set()


def test_undefined_enum_value_is_rejected() -> None:
    assert fields(us.ListUsersRequest(role=99)) == {("role", "UNDEFINED_ENUM")}
    assert fields(us.ListUsersRequest(role=user_pb2.ROLE_SALES)) == set()


def test_required_message_and_min_length() -> None:
    assert fields(us.CreateUserRequest(password="short")) == {("user", "REQUIRED"), ("password", "TOO_SHORT")}


async def test_bad_request_is_invalid_argument_with_field_violations() -> None:
    class Users:
        async def ListUsers(self, request, context):
            raise AssertionError("handler must not run for a bad request")

    service = us.DESCRIPTOR.services_by_name["UserService"]
    async with serving([(service, Users())]) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).ListUsers(us.ListUsersRequest(page_size=-5, role=42))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    raw = dict(err.value.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and info.reason == "INVALID_ARGUMENT"
    assert info.domain == "identity.bhiv.core"
    assert status.details[1].Unpack(bad)
    assert {v.field for v in bad.field_violations} == {"page_size", "role"}


# --- Timestamp and Duration: valid by their own definition, in every request, unannotated ---------

TS_MIN, TS_MAX = -62_135_596_800, 253_402_300_799
DUR_MAX = 315_576_000_000


def stamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def span(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (stamp(TS_MIN), set()),
        (stamp(TS_MAX, 999_999_999), set()),
        (stamp(0), set()),
        (stamp(TS_MAX + 1), {("start_time.seconds", "OUT_OF_RANGE")}),
        (stamp(TS_MIN - 1), {("start_time.seconds", "OUT_OF_RANGE")}),
        (stamp(-(2**63)), {("start_time.seconds", "OUT_OF_RANGE")}),
        (stamp(0, -1), {("start_time.nanos", "OUT_OF_RANGE")}),
        (stamp(0, 1_000_000_000), {("start_time.nanos", "OUT_OF_RANGE")}),
        (stamp(2**62, -5), {("start_time.seconds", "OUT_OF_RANGE"), ("start_time.nanos", "OUT_OF_RANGE")}),
    ],
    ids=str,
)
def test_timestamps_must_be_in_the_range_their_type_defines(value, expected) -> None:
    assert fields(aus.ListAuditRecordsRequest(start_time=value)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (span(DUR_MAX, 999_999_999), set()),
        (span(-DUR_MAX, -999_999_999), set()),
        (span(0, -5), set()),
        (span(0, 5), set()),
        (span(DUR_MAX + 1), {("ttl.seconds", "OUT_OF_RANGE")}),
        (span(-DUR_MAX - 1), {("ttl.seconds", "OUT_OF_RANGE")}),
        (span(0, 1_000_000_000), {("ttl.nanos", "OUT_OF_RANGE")}),
        (span(0, -1_000_000_000), {("ttl.nanos", "OUT_OF_RANGE")}),
        (span(5, -1), {("ttl.nanos", "OUT_OF_RANGE")}),
        (span(-5, 1), {("ttl.nanos", "OUT_OF_RANGE")}),
    ],
    ids=str,
)
def test_durations_must_be_in_range_with_nanos_of_the_sign_of_seconds(value, expected) -> None:
    request = bs.BlockAddressRequest(cidr="192.0.2.1/32", reason="abuse", ttl=value)
    assert fields(request) == expected


def test_a_nested_and_repeated_timestamp_is_named_by_its_path() -> None:
    request = completion.CompleteRequest(
        messages=[
            llm_message.Message(content="hi"),
            llm_message.Message(content="x", create_time=stamp(-(2**40))),
        ]
    )
    assert ("messages[1].create_time.seconds", "OUT_OF_RANGE") in fields(request)


WELL_KNOWN = {"google.protobuf.Timestamp", "google.protobuf.Duration"}
REQUESTS = sorted({m.input_type for s in all_services() for m in s.methods}, key=lambda d: d.full_name)
Path = tuple[FieldDescriptor, ...]


def well_known_fields(descriptor: Descriptor, above: Path = ()) -> list[Path]:
    """Every Timestamp or Duration field reachable in a message type, as the fields leading to it."""
    found: list[Path] = []
    for field in descriptor.fields:
        target, path = field.message_type, (*above, field)
        if target is None:
            continue
        where = ".".join(f.name for f in path)
        if target.GetOptions().map_entry:
            values = target.fields_by_name["value"].message_type
            assert values is None, f"{where}: validation does not enter maps of messages"
            continue
        assert target not in {f.message_type for f in above}, f"{where}: validation stops at a cycle"
        found += [path] if target.full_name in WELL_KNOWN else well_known_fields(target, path)
    return found


def with_bad_value(request: Message, path: Path) -> str:
    """Sets the seconds at ``path`` (item 0 of a repeated field) out of range; returns its path."""
    shown = []
    for field in path:
        child = getattr(request, field.name)
        request = child.add() if field.is_repeated else child
        shown.append(f"{field.name}[0]" if field.is_repeated else field.name)
    request.seconds = 2**62  # type: ignore[attr-defined]
    return ".".join(shown) + ".seconds"


@pytest.mark.parametrize("descriptor", REQUESTS, ids=lambda d: d.full_name)
def test_every_timestamp_and_duration_of_every_request_is_checked(descriptor: Descriptor) -> None:
    paths = well_known_fields(descriptor)
    for path in paths:
        request = message_factory.GetMessageClass(descriptor)()
        where = with_bad_value(request, path)
        assert (where, "OUT_OF_RANGE") in fields(request)
    if paths:  # and so the chain binds a validation step to every unary method taking it
        for method in (m for s in all_services() for m in s.methods if m.input_type is descriptor):
            if not method.client_streaming:
                assert ValidationInterceptor().bind(method_path(method), method) is not None


def test_a_request_type_without_rules_or_well_known_fields_binds_no_check() -> None:
    jwks = auth.DESCRIPTOR.services_by_name["AuthService"].methods_by_name["GetJwks"]
    assert ValidationInterceptor().bind(method_path(jwks), jwks) is None


async def test_an_out_of_range_timestamp_is_invalid_argument_before_the_handler() -> None:
    class Audit:
        async def ListAuditRecords(self, request, context):
            raise AssertionError("handler must not run for a bad request")

    service = aus.DESCRIPTOR.services_by_name["AuditService"]
    async with serving([(service, Audit())]) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await aus_grpc.AuditServiceStub(channel).ListAuditRecords(
                aus.ListAuditRecordsRequest(start_time=stamp(TS_MAX + 1), end_time=stamp(0, -1))
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    raw = dict(err.value.trailing_metadata() or ())["grpc-status-details-bin"]
    bad = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(raw).details[1].Unpack(bad)
    assert {(v.field, v.reason) for v in bad.field_violations} == {
        ("start_time.seconds", "OUT_OF_RANGE"),
        ("end_time.nanos", "OUT_OF_RANGE"),
    }


class CountingItems(list):
    """A repeated field that counts the items the validator looks at."""

    visited = 0

    def __iter__(self):
        for item in super().__iter__():
            self.visited += 1
            yield item

    def __getitem__(self, index):
        self.visited += 1
        return super().__getitem__(index)


class WithField:
    """``message`` as the validator sees it, with one field replaced."""

    def __init__(self, message, name: str, value) -> None:
        self._message, self._name, self._value = message, name, value

    def __getattr__(self, name: str):
        return self._value if name == self._name else getattr(self._message, name)


def test_repeated_field_over_max_items_is_refused_by_its_length_without_visiting_an_item() -> None:
    from bhiv.llm.v1 import completion_service_pb2 as cs

    # The fuzzer's request: 2,095,000 empty messages where at most 100 are allowed.
    items = CountingItems([cs.CompleteRequest().messages.add()] * 2_095_000)
    violations = validate(WithField(cs.CompleteRequest(), "messages", items))
    assert [(v.field, v.reason) for v in violations] == [("messages", "TOO_MANY")]
    assert items.visited == 0


def test_violations_are_bounded_and_the_rest_counted() -> None:
    from bhiv.llm.v1 import completion_service_pb2 as cs

    request = cs.CompleteRequest()
    for _ in range(100):  # each empty message lacks its role and its content: 200 violations
        request.messages.add()
    violations = validate(request)
    assert len(violations) == MAX_VIOLATIONS
    assert violations[:2] == [
        FieldViolation("messages[0].role", "is required", "REQUIRED"),
        FieldViolation("messages[0].content", "is required", "REQUIRED"),
    ]
    assert violations.omitted == 200 - MAX_VIOLATIONS  # type: ignore[attr-defined]


def test_a_string_over_max_len_is_not_matched_against_its_pattern() -> None:
    class Pattern:
        matched = 0

        def fullmatch(self, value):
            self.matched += 1
            return None

    from bhiv_core.interceptors import validation

    plan = validation._plan_for(us.GetUserRequest.DESCRIPTOR)
    (name,) = plan.fields
    pattern = Pattern()
    too_long = dataclasses.replace(name, max_len=10, pattern=pattern)
    out: list[FieldViolation] = []
    validation._check_scalar(too_long, "users/" + "x" * 1000, "name", out)
    assert [v.reason for v in out] == ["TOO_LONG"]
    assert pattern.matched == 0
    validation._check_scalar(too_long, "users/x", "name", out)
    assert pattern.matched == 1


async def test_the_fuzzers_four_megabyte_repeated_field_gets_one_small_violation() -> None:
    from bhiv.llm.v1 import completion_service_pb2 as cs

    class Completions:
        async def Complete(self, request, context):
            raise AssertionError("handler must not run for a bad request")

    body = b"\x12\x00" * 2_095_000  # field 2 (messages), 2,095,000 empty elements: 4.19 MB
    service = cs.DESCRIPTOR.services_by_name["CompletionService"]
    async with serving([(service, Completions())]) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/bhiv.llm.v1.CompletionService/Complete")(body, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "messages: must have at most 100 items"
    raw = dict(err.value.trailing_metadata() or ())["grpc-status-details-bin"]
    bad = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(raw).details[1].Unpack(bad)
    assert [(v.field, v.reason) for v in bad.field_violations] == [("messages", "TOO_MANY")]
