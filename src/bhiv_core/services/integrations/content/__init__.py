"""Social content: ``ContentService`` of ``bhiv.integrations.v1``."""

__all__: list[str] = []
