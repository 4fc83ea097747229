"""The integrations service: integrations, webhooks, external API calls and social content (``bhiv.integrations.v1``)."""

__all__: list[str] = []
