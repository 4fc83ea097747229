"""The integrations service: integrations, webhooks, external API calls and social content.

Contract: ``bhiv.integrations.v1``.
"""

__all__: list[str] = []
