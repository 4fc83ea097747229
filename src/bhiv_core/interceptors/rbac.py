"""Authorization: the permission an RPC requires, read from its contract, against the principal.

Only authorizes (PERMISSION_DENIED). People are authorized by their role through the matrix in
:mod:`bhiv_core.security.roles`; service tokens carry an explicit scope and get nothing else. An
RPC with no declared access rule is refused (fail closed). An RPC whose rule names a ``self_field``
(``UserService.GetUser``: any principal may get its own user) admits a caller that request field
names with the rule's ``self_permission`` alone; for anything else it needs the permission, checked
here before the service looks anything up, so a refusal never says whether a record exists.
Ownership of records (customers see only their own) is checked by each service, after this.

A refusal names the caller's role and the missing permission only to staff (and to service
tokens, which only the platform holds); customers are told just that the call is not theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from bhiv_core.runtime.chain import CallInfo, Check, Context, PreCheckInterceptor, run_bound
from bhiv_core.runtime.contracts import policy_of
from bhiv_core.runtime.errors import PermissionDenied, Unauthenticated
from bhiv_core.security.principal import Principal
from bhiv_core.security.roles import STAFF_ROLES, role_allows

__all__ = ["Policy", "RbacInterceptor", "RolePolicy"]


class Policy(Protocol):
    """Decides whether a principal holds a permission."""

    def allows(self, principal: Principal, permission: str) -> bool:
        """True when ``principal`` holds ``permission``."""
        ...


class RolePolicy:
    """The role matrix for people; the token's scope for services."""

    def allows(self, principal: Principal, permission: str) -> bool:
        """True when the scope (services) or the role (people) grants ``permission``."""
        if principal.scopes is not None:
            return permission in principal.scopes
        return role_allows(principal.role, permission)


class RbacInterceptor(PreCheckInterceptor):
    """Refuses calls whose principal lacks the RPC's permission.

    Bound per method: the contract's rule is read once, public and unknown methods get no check,
    and the others a check with their permission built in.

    Args:
        policy: The role/scope policy.
        on_denied: Called with the call, the principal and the missing permission of every call
            refused for lack of it, to report it as a security event; optional.
    """

    def __init__(self, policy: Policy, on_denied: Callable[[CallInfo, Principal, str], None] | None = None):
        self._policy = policy
        self._on_denied = on_denied

    def bind(self, method: str, descriptor: MethodDescriptor | None) -> Check | None:
        """The permission check of ``method``, from its contract (fail closed without a rule)."""
        policy = policy_of(descriptor) if descriptor is not None else None
        if policy is None or descriptor is None or policy.public:
            return None  # unknown methods answer UNIMPLEMENTED; public RPCs need nothing
        if not policy.declared:
            return _refuse_undeclared
        permission = policy.permission
        allows = self._policy.allows
        on_denied = self._on_denied
        if policy.self_field:
            return _self_or_permission(
                descriptor, policy.self_field, policy.self_permission, permission, allows, on_denied
            )

        def authorize(call: CallInfo, request: Any, context: Context) -> None:
            principal = call.principal
            if not isinstance(principal, Principal):
                raise Unauthenticated("authentication required", reason="MISSING_CREDENTIALS")
            if not allows(principal, permission):
                if on_denied is not None:
                    on_denied(call, principal, permission)
                raise _denied(principal, permission)

        return authorize

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Allows the call, or raises PermissionDenied."""
        await run_bound(self.bind(call.method, call.descriptor), call, request, context)


def _refuse_undeclared(call: CallInfo, request: Any, context: Context) -> None:
    raise PermissionDenied("this RPC declares no access rule", reason="NO_ACCESS_RULE")


def _refuse_bad_self_rule(call: CallInfo, request: Any, context: Context) -> None:
    raise PermissionDenied("this RPC's access rule names no usable self field", reason="NO_ACCESS_RULE")


def _self_or_permission(
    descriptor: MethodDescriptor,
    field: str,
    self_permission: str,
    permission: str,
    allows: Callable[[Principal, str], bool],
    on_denied: Callable[[CallInfo, Principal, str], None] | None = None,
) -> Check:
    """The check of an RPC that admits the caller naming itself in ``field`` with ``self_permission``.

    A rule whose field is not a singular string of the request, or that names no self permission,
    refuses every call (fail closed; the contract tests catch it first).
    """
    found = descriptor.input_type.fields_by_name.get(field)
    if found is None or found.type != FieldDescriptor.TYPE_STRING or found.is_repeated or not self_permission:
        return _refuse_bad_self_rule

    def authorize(call: CallInfo, request: Any, context: Context) -> None:
        principal = call.principal
        if not isinstance(principal, Principal):
            raise Unauthenticated("authentication required", reason="MISSING_CREDENTIALS")
        if allows(principal, permission):
            return
        if getattr(request, field) == principal.subject and allows(principal, self_permission):
            return
        if on_denied is not None:
            on_denied(call, principal, permission)
        raise _denied(principal, permission)

    return authorize


def _denied(principal: Principal, permission: str) -> PermissionDenied:
    """The refusal of ``principal``: the role and the missing permission only for staff and services."""
    if principal.scopes is not None or principal.role in STAFF_ROLES:
        who = principal.role or principal.subject
        return PermissionDenied(
            f"{who} may not call this RPC: it requires {permission}",
            reason="MISSING_PERMISSION",
            metadata={"permission": permission},
        )
    return PermissionDenied("you may not call this RPC", reason="MISSING_PERMISSION")
