"""Authentication: a bearer token from the call's metadata becomes the call's principal.

Only authenticates (UNAUTHENTICATED); what the principal may do is RBAC's concern. RPCs that the
contract marks ``public`` pass without a token; health and reflection are skipped by the chain's
selector. The principal is set on the call and in the read-only ``current_principal`` ContextVar.
"""

from __future__ import annotations

from typing import Any

from bhiv_core.runtime.chain import CallInfo, Context, PreCheckInterceptor
from bhiv_core.runtime.contracts import policy_of
from bhiv_core.runtime.errors import Unauthenticated
from bhiv_core.security.jwt import TokenError, TokenVerifier
from bhiv_core.security.principal import current_principal

__all__ = ["AuthInterceptor", "bearer_token", "parse_bearer"]


def bearer_token(metadata: Any) -> str | None:
    """The token of the first ``authorization: Bearer <token>`` header of ``metadata``, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            return parse_bearer(value)
    return None


def parse_bearer(value: Any) -> str | None:
    """The token of an ``authorization`` header value ``Bearer <token>``, or None (absent, other scheme)."""
    if value is None:
        return None
    scheme, _, token = str(value).partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


class AuthInterceptor(PreCheckInterceptor):
    """Verifies the caller's access token.

    Args:
        verifier: Checks tokens (signature, claims, revocation; cached).
        on_failure: Called with the failure reason (for metrics); optional.
    """

    def __init__(self, verifier: TokenVerifier, on_failure: Any = None):
        self._verifier = verifier
        self._on_failure = on_failure
        self._public: dict[str, bool] = {}

    def _is_public(self, call: CallInfo) -> bool:
        public = self._public.get(call.method)
        if public is None:
            public = call.descriptor is not None and policy_of(call.descriptor).public
            self._public[call.method] = public
        return public

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Sets the principal, or refuses the call with UNAUTHENTICATED."""
        if self._is_public(call):
            return
        token = parse_bearer(call.headers.get("authorization"))
        if token is None:
            self._failed("missing")
            raise Unauthenticated("authentication required", reason="MISSING_CREDENTIALS")
        try:
            principal = await self._verifier.verify(token)
        except TokenError as exc:
            self._failed(exc.detail)
            raise
        call.principal = principal
        current_principal.set(principal)

    def _failed(self, reason: str) -> None:
        if self._on_failure is not None:
            self._on_failure(reason)
