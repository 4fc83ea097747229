"""The sentinel service: audit records, threats, blocks and alert channels (``bhiv.sentinel.v1``)."""

__all__: list[str] = []
