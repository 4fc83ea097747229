"""Webhooks: subscriptions to platform events, signed deliveries with retries, the event intake.

``WebhookService`` and ``EventService`` of ``bhiv.integrations.v1``.
"""

__all__: list[str] = []
