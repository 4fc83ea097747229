"""Sentinel's alerts: channels (Slack webhook, e-mail, signed webhook), delivery, and ``raise_alert``.

- :mod:`.resources`: alert channels and alerts as resource-kit collections in
  ``<data_dir>/sentinel-alerts.db`` (or the MongoDB of ``BHIV_SENTINEL_STORE_URL``).
- channel secrets (webhook URLs, HMAC keys) are encrypted at rest by :mod:`bhiv_core.storage.sealing`.
- :mod:`.transports`: the bounded HTTP POST, SMTP and the webhook signature.
- :mod:`.delivery`: :class:`~.delivery.AlertDispatcher`, whose ``raise_alert`` the response policy
  calls; it deduplicates, rate-limits per channel and delivers with bounded retries.
- :mod:`.channels` and :mod:`.servicer`: ``bhiv.sentinel.v1.AlertService``.
"""

__all__: list[str] = []
