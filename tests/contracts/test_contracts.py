"""The contracts, checked as data: every RPC declares its access, every List paginates."""

from __future__ import annotations

import re

import pytest

from bhiv_core.registry import SERVICES
from bhiv_core.runtime.contracts import all_services, method_path, policy_of, services_of_package

METHODS = [m for s in all_services() for m in s.methods]
PERMISSION = re.compile(r"[a-z]+\.[a-z_]+\.[a-z_]+")


def test_every_registered_service_has_contracts() -> None:
    for spec in SERVICES:
        assert services_of_package(spec.package), f"no services in {spec.package}"


def test_every_contract_package_is_registered() -> None:
    packages = {s.file.package for s in all_services()}
    assert packages == {spec.package for spec in SERVICES}


@pytest.mark.parametrize("method", METHODS, ids=method_path)
def test_every_rpc_declares_its_access(method) -> None:
    policy = policy_of(method)
    assert policy.declared, f"{method_path(method)} has no (bhiv.options.v1.access)"
    assert policy.public != bool(policy.permission), "exactly one of permission or public"
    if policy.permission:
        assert PERMISSION.fullmatch(policy.permission)
        domain = method.containing_service.file.package.split(".")[1]
        assert policy.permission.split(".")[0] == domain


def test_self_rules_name_a_string_request_field_and_a_declared_permission() -> None:
    from google.protobuf.descriptor import FieldDescriptor

    with_self = {
        method_path(m): m for m in METHODS if policy_of(m).self_field or policy_of(m).self_permission
    }
    assert set(with_self) == {"/bhiv.identity.v1.UserService/GetUser"}
    for path, method in with_self.items():
        policy = policy_of(method)
        field = method.input_type.fields_by_name.get(policy.self_field)
        assert field is not None and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated, path
        assert policy.permission and PERMISSION.fullmatch(policy.self_permission), path
    get_user = policy_of(with_self["/bhiv.identity.v1.UserService/GetUser"])
    assert (get_user.self_field, get_user.self_permission) == ("name", "identity.self.read")


@pytest.mark.parametrize("method", [m for m in METHODS if m.name.startswith("List")], ids=method_path)
def test_every_list_paginates(method) -> None:
    request, response = method.input_type.fields_by_name, method.output_type.fields_by_name
    assert "page_size" in request and "page_token" in request
    assert "next_page_token" in response


def test_only_login_refresh_jwks_revocations_and_service_tokens_are_public() -> None:
    public = {method_path(m) for m in METHODS if policy_of(m).public}
    assert public == {
        "/bhiv.identity.v1.AuthService/Login",
        "/bhiv.identity.v1.AuthService/RefreshToken",
        "/bhiv.identity.v1.AuthService/GetJwks",
        "/bhiv.identity.v1.AuthService/ListRevocations",
        "/bhiv.identity.v1.AuthService/WatchRevocations",
        "/bhiv.identity.v1.AuthService/IssueServiceToken",
    }


def test_only_the_revocation_stream_and_service_tokens_are_mesh_only_and_both_are_public() -> None:
    mesh_only = {method_path(m) for m in METHODS if policy_of(m).mesh_only}
    assert mesh_only == {
        "/bhiv.identity.v1.AuthService/WatchRevocations",
        "/bhiv.identity.v1.AuthService/IssueServiceToken",
    }
    # A mesh-only RPC with a permission would need a token the edge never sees: the rule is for
    # the RPCs a service calls before it has one.
    assert all(policy_of(m).public for m in METHODS if policy_of(m).mesh_only)
