"""The authenticated principal of the current call, set by auth in a read-only ``ContextVar``."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["Principal", "current_principal", "require_principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, from a verified access token.

    Attributes:
        subject: The token's ``sub``: ``users/{id}`` for people, ``services/{name}`` for services.
        role: ``admin``, ``ops``, ``sales``, ``support`` or ``customer``; empty for a service.
        customer: For customers, their CRM record ``customers/{id}``; empty otherwise.
        token_id: The token's ``jti``.
        expires_at: The token's ``exp`` (Unix seconds).
        scopes: For service tokens, the only permissions they carry; None for people (role decides).
        token: The raw bearer token, forwarded on service-to-service calls.
    """

    subject: str
    role: str
    customer: str = ""
    token_id: str = ""
    expires_at: float = 0.0
    scopes: frozenset[str] | None = None
    token: str = ""

    @property
    def is_customer(self) -> bool:
        """True for customer accounts, whose access is limited to their own records."""
        return self.role == "customer"


current_principal: ContextVar[Principal | None] = ContextVar("bhiv_principal", default=None)


def require_principal() -> Principal:
    """Returns the current principal; raises Unauthenticated when the call has none."""
    principal = current_principal.get()
    if principal is None:
        from bhiv_core.runtime.errors import Unauthenticated

        raise Unauthenticated("authentication required")
    return principal
