"""Who is calling: principals, roles and permissions, tokens, and the client address."""

__all__: list[str] = []
