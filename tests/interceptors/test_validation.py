from __future__ import annotations

import dataclasses

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.interceptors.validation import validate
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
