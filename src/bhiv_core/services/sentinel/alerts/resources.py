"""Alert channels and alerts on the resource kit, in sentinel's kit store.

- **alert_channels** (``alertChannels/{id}``): listed by display name (case-folded), then name.
  The stored message is the channel as every read returns it: its ``target`` redacted for the
  webhook kinds (a Slack webhook URL is a credential) and ``has_secret`` set; the real target and
  the HMAC key are sealed together in the store-only ``sealed`` field
  (:mod:`bhiv_core.storage.sealing`), so no read path can return them by mistake.
- **alerts** (``alerts/{id}``): newest first. Store-only fields: ``dedup`` (the raiser's dedup
  key), ``due`` (when the next delivery attempt is due; PENDING alerts only) and ``payload`` (the
  kind and details sent, as JSON, so a restarted sentinel resumes delivery).

The kit store is sentinel's second store: ``<data_dir>/sentinel-alerts.db`` (sentinel's own
``sentinel.db`` predates the kit), or the MongoDB database ``bhiv_sentinel-alerts`` of
``BHIV_SENTINEL_STORE_URL``.
"""

from __future__ import annotations

from pathlib import Path

from bhiv.sentinel.v1 import alert_pb2
from bhiv_core.resources import (
    Collection,
    Field,
    ResourceStore,
    ResourceType,
    Value,
    make_resource_store,
    sort_key,
)
from bhiv_core.resources.sqlite import schema
from bhiv_core.runtime.times import seconds_of

__all__ = ["ALERT", "ALERTS", "CHANNEL", "CHANNELS", "MIGRATIONS", "STORE_NAME", "make_alert_store"]

STORE_NAME = "sentinel-alerts"

CHANNELS = Collection(
    "alert_channels",
    (Field("sort", "text"), Field("kind", "int"), Field("enabled", "bool"), Field("sealed", "text")),
    order=("sort",),
    indexes=(("kind",), ("enabled",)),
)


def _channel_fields(m: alert_pb2.AlertChannel) -> dict[str, Value]:
    # ``sealed`` is set by the caller (see channels.sealed_record): it is not in the message.
    return {"sort": sort_key(m.display_name), "kind": int(m.kind), "enabled": m.enabled, "sealed": ""}


CHANNEL: ResourceType[alert_pb2.AlertChannel] = ResourceType(
    message=alert_pb2.AlertChannel,
    collection=CHANNELS,
    index=_channel_fields,
    mutable=frozenset({"display_name", "kind", "target", "min_severity", "enabled"}),
    label="alert channel",
    request_field="alert_channel",
    prefix="alertChannels",
)

ALERTS = Collection(
    "alerts",
    (
        Field("created", "real"),
        Field("channel", "text"),
        Field("incident", "text"),
        Field("status", "int"),
        Field("test", "bool"),
        Field("dedup", "text"),
        Field("due", "real"),
        Field("payload", "text"),
    ),
    order=("created",),
    descending=True,
    indexes=(("channel",), ("incident",), ("status", "due"), ("channel", "dedup")),
)


def _alert_fields(m: alert_pb2.Alert) -> dict[str, Value]:
    return {
        "created": seconds_of(m.create_time),
        "channel": m.channel,
        "incident": m.incident,
        "status": int(m.status),
        "test": m.test,
        "dedup": "",
        "due": 0.0,
        "payload": "",
    }


ALERT: ResourceType[alert_pb2.Alert] = ResourceType(
    message=alert_pb2.Alert,
    collection=ALERTS,
    index=_alert_fields,
    mutable=frozenset(),  # changed only by delivery, never through an update RPC
    label="alert",
    request_field="alert",
)

MIGRATIONS = (schema((CHANNELS, ALERTS)),)


def make_alert_store(data_dir: Path, url: str | None) -> ResourceStore:
    """Sentinel's kit store: ``<data_dir>/sentinel-alerts.db``, or MongoDB by ``url``."""
    return make_resource_store(
        name=STORE_NAME, collections=(CHANNELS, ALERTS), migrations=MIGRATIONS, data_dir=data_dir, url=url
    )
