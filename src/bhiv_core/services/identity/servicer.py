"""The identity servicer: proto in, domain call, proto out."""

from __future__ import annotations

__all__ = ["MISSING", "IdentityServicer"]

MISSING = "identity (login, tokens, JWKS, users, roles) is built by the identity and security-chain issue"


class IdentityServicer:
    """Implements ``bhiv.identity.v1``.

    No RPC is built yet: the runtime answers each one UNIMPLEMENTED with :data:`MISSING`.
    """
