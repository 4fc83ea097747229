"""Authentication: a bearer token from the call's metadata becomes the call's principal.

Only authenticates (UNAUTHENTICATED); what the principal may do is RBAC's concern. RPCs that the
contract marks ``public`` pass without a token; health and reflection are skipped by the chain's
selector. The principal is set on the call and in the read-only ``current_principal`` ContextVar.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.descriptor import MethodDescriptor

from bhiv_core.runtime.chain import CallInfo, Check, Context, PreCheckInterceptor, run_bound
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

    Bound per method: public RPCs get no check at all; the others read the token and, for a token
    verified before (the verifier's cache), admit the call without awaiting anything.

    Args:
        verifier: Checks tokens (signature, claims, revocation; cached).
        on_failure: Called with the failure reason (for metrics); optional.
        on_refused: Called with the call and the failure reason (``missing``, ``expired``, ``bad
            signature``...) of every refused call, to report it as a security event; optional.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        on_failure: Any = None,
        on_refused: Callable[[CallInfo, str], None] | None = None,
    ):
        self._verifier = verifier
        self._on_failure = on_failure
        self._on_refused = on_refused

    def bind(self, method: str, descriptor: MethodDescriptor | None) -> Check | None:
        """No check for a public RPC; the token check for every other method (unknown ones too)."""
        if descriptor is not None and policy_of(descriptor).public:
            return None
        return self._authenticate

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Sets the principal, or refuses the call with UNAUTHENTICATED."""
        await run_bound(self.bind(call.method, call.descriptor), call, request, context)

    def _authenticate(self, call: CallInfo, request: Any, context: Context) -> Awaitable[None] | None:
        token = parse_bearer(call.headers.get("authorization"))
        if token is None:
            self._failed(call, "missing")
            raise Unauthenticated("authentication required", reason="MISSING_CREDENTIALS")
        try:
            principal = self._verifier.cached(token)
        except TokenError as exc:
            self._failed(call, exc.detail)
            raise
        if principal is None:
            return self._verify(call, token)
        call.principal = principal
        current_principal.set(principal)
        return None

    async def _verify(self, call: CallInfo, token: str) -> None:
        try:
            principal = await self._verifier.verify(token)
        except TokenError as exc:
            self._failed(call, exc.detail)
            raise
        call.principal = principal
        current_principal.set(principal)

    def _failed(self, call: CallInfo, reason: str) -> None:
        if self._on_failure is not None:
            self._on_failure(reason)
        if self._on_refused is not None:
            self._on_refused(call, reason)
