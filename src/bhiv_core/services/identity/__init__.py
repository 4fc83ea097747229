"""The identity service: users, roles, tokens and signing keys (``bhiv.identity.v1``)."""

__all__: list[str] = []
