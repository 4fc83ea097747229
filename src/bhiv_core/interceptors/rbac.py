"""Authorization: the permission an RPC requires, read from its contract, against the principal.

Only authorizes (PERMISSION_DENIED). People are authorized by their role through the matrix in
:mod:`bhiv_core.security.roles`; service tokens carry an explicit scope and get nothing else. An
RPC with no declared access rule is refused (fail closed). Ownership of records (customers see only
their own) is checked by each service, after this.
"""

from __future__ import annotations

from typing import Any, Protocol

from google.protobuf.descriptor import MethodDescriptor

from bhiv_core.runtime.chain import CallInfo, Check, Context, PreCheckInterceptor, run_bound
from bhiv_core.runtime.contracts import policy_of
from bhiv_core.runtime.errors import PermissionDenied, Unauthenticated
from bhiv_core.security.principal import Principal
from bhiv_core.security.roles import role_allows

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
    """

    def __init__(self, policy: Policy):
        self._policy = policy

    def bind(self, method: str, descriptor: MethodDescriptor | None) -> Check | None:
        """The permission check of ``method``, from its contract (fail closed without a rule)."""
        policy = policy_of(descriptor) if descriptor is not None else None
        if policy is None or policy.public:
            return None  # unknown methods answer UNIMPLEMENTED; public RPCs need nothing
        if not policy.declared:
            return _refuse_undeclared
        permission = policy.permission
        allows = self._policy.allows

        def authorize(call: CallInfo, request: Any, context: Context) -> None:
            principal = call.principal
            if not isinstance(principal, Principal):
                raise Unauthenticated("authentication required", reason="MISSING_CREDENTIALS")
            if not allows(principal, permission):
                who = principal.role or principal.subject
                raise PermissionDenied(
                    f"{who} may not call this RPC: it requires {permission}",
                    reason="MISSING_PERMISSION",
                    metadata={"permission": permission},
                )

        return authorize

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Allows the call, or raises PermissionDenied."""
        await run_bound(self.bind(call.method, call.descriptor), call, request, context)


def _refuse_undeclared(call: CallInfo, request: Any, context: Context) -> None:
    raise PermissionDenied("this RPC declares no access rule", reason="NO_ACCESS_RULE")
