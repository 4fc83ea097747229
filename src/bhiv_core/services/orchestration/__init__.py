"""The orchestration service: the twelve agents, tasks, workflows and the knowledge base.

Contract: ``bhiv.orchestration.v1``.
"""

__all__: list[str] = []
