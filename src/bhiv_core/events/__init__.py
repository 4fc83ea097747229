"""Platform events: the catalog, the transactional outbox every publishing service writes, its relay.

- :mod:`.catalog`: the event types, read from the contracts (``bhiv.integrations.v1`` messages
  with the ``(bhiv.options.v1.event)`` option), and the ``Event`` envelope.
- :mod:`.outbox`: ``publish(txn, payload, ...)`` writes an event into the service's own kit store
  inside the transaction of the change it reports, so the event commits or rolls back with it.
- :mod:`.relay`: one background task per publishing service drains its outbox, in commit order,
  to integrations' ``EventService/PublishEvents`` with a service token; integrations drops the
  duplicates a retried batch brings (at-least-once, deduplicated by event id).
"""

__all__: list[str] = []
