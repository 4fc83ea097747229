"""Agents that watch the mesh rather than serve it: threat detection (and, later, response)."""

__all__: list[str] = []
