from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.interceptors.validation import validate
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
