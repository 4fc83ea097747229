"""Authorization: the permission an RPC requires, read from its contract, against the principal.

Only authorizes (PERMISSION_DENIED). People are authorized by their role through the matrix in
:mod:`bhiv_core.security.roles`; service tokens carry an explicit scope and get nothing else. An
RPC with no declared access rule is refused (fail closed). Ownership of records (customers see only
their own) is checked by each service, after this.
"""

from __future__ import annotations

from typing import Any, Protocol

from bhiv_core.runtime.chain import CallInfo, Context, PreCheckInterceptor
from bhiv_core.runtime.contracts import MethodPolicy, policy_of
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

    Args:
        policy: The role/scope policy.
    """

    def __init__(self, policy: Policy):
        self._policy = policy
        self._policies: dict[str, MethodPolicy | None] = {}

    def _policy_for(self, call: CallInfo) -> MethodPolicy | None:
        if call.method not in self._policies:
            self._policies[call.method] = policy_of(call.descriptor) if call.descriptor is not None else None
        return self._policies[call.method]

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Allows the call, or raises PermissionDenied."""
        policy = self._policy_for(call)
        if policy is None or policy.public:
            return  # unknown methods answer UNIMPLEMENTED; public RPCs need nothing
        if not policy.declared:
            raise PermissionDenied("this RPC declares no access rule", reason="NO_ACCESS_RULE")
        principal = call.principal
        if not isinstance(principal, Principal):
            raise Unauthenticated("authentication required", reason="MISSING_CREDENTIALS")
        if not self._policy.allows(principal, policy.permission):
            who = principal.role or principal.subject
            raise PermissionDenied(
                f"{who} may not call this RPC: it requires {policy.permission}",
                reason="MISSING_PERMISSION",
                metadata={"permission": policy.permission},
            )
