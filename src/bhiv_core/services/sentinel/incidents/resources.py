"""Incidents and the blocks made for them, on the resource kit, in sentinel's incident store.

- **incidents** (``incidents/{id}``): listed most recently seen first. The stored message is the
  incident as every read returns it. Store-only fields: ``group_key`` (the rule and source that
  group detections into it), ``rule`` (the rule id), ``blocked`` (the addresses the response
  agent blocked, or claimed to block, for it) and ``alerted`` (the highest severity it was alerted
  at, 0 when never): the response agent's memory, so each action is taken once per incident.
- **address_blocks** (no resource name, never returned by an RPC): one record per block the
  response agent made (address, when, until when, incident), so a repeat offender's next block
  is longer and an address under an active block is not blocked again.

- **outbox**, **outbox_state**: the ``sentinel.incident.opened`` events written in the transaction
  that opens an incident, until the relay hands them to integrations (:mod:`bhiv_core.events.outbox`).

The kit store is sentinel's third store: ``<data_dir>/sentinel-incidents.db``, or the MongoDB
database ``bhiv_sentinel-incidents`` of ``BHIV_SENTINEL_STORE_URL``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bhiv.sentinel.v1 import threat_pb2
from bhiv_core.events import outbox
from bhiv_core.resources import (
    Collection,
    Field,
    Record,
    ResourceStore,
    ResourceType,
    Value,
    make_resource_store,
)
from bhiv_core.resources.sqlite import schema
from bhiv_core.runtime.times import seconds_of

__all__ = [
    "BLOCKS",
    "COLLECTIONS",
    "INCIDENT",
    "INCIDENTS",
    "MIGRATIONS",
    "STATE_FIELDS",
    "STORE_NAME",
    "incident_record",
    "make_incident_store",
    "state_of",
]

STORE_NAME = "sentinel-incidents"

INCIDENTS = Collection(
    "incidents",
    (
        Field("last_seen", "real"),
        Field("first_seen", "real"),
        Field("status", "int"),
        Field("severity", "int"),
        Field("category", "int"),
        Field("group_key", "text"),
        Field("rule", "text"),
        Field("blocked", "list"),
        Field("alerted", "int"),
    ),
    order=("last_seen",),
    descending=True,
    indexes=(("group_key", "status"), ("status",), ("category",), ("severity",)),
)

STATE_FIELDS = ("group_key", "rule", "blocked", "alerted")
"""The store-only fields: not in the message, kept across every rewrite of the record."""


def _incident_fields(m: threat_pb2.Incident) -> dict[str, Value]:
    return {
        "last_seen": seconds_of(m.last_seen_time),
        "first_seen": seconds_of(m.first_seen_time),
        "status": int(m.status),
        "severity": int(m.severity),
        "category": int(m.category),
        "group_key": "",
        "rule": "",
        "blocked": [],
        "alerted": 0,
    }


INCIDENT: ResourceType[threat_pb2.Incident] = ResourceType(
    message=threat_pb2.Incident,
    collection=INCIDENTS,
    index=_incident_fields,
    mutable=frozenset({"status", "notes"}),
    label="incident",
    request_field="incident",
)


def incident_record(incident: threat_pb2.Incident, state: dict[str, Value]) -> Record:
    """The stored form of ``incident`` with its store-only ``state`` (see :data:`STATE_FIELDS`)."""
    record = INCIDENT.record(incident)
    return dataclasses.replace(record, fields={**record.fields, **state})


def state_of(record: Record) -> dict[str, Value]:
    """The store-only fields of a stored incident."""
    return {name: record.value(name) for name in STATE_FIELDS}


BLOCKS = Collection(
    "address_blocks",
    (Field("address", "text"), Field("at", "real"), Field("until", "real"), Field("incident", "text")),
    order=("at",),
    indexes=(("address",),),
)

MIGRATIONS = (schema((INCIDENTS, BLOCKS)), outbox.outbox_migration())
COLLECTIONS = (INCIDENTS, BLOCKS, *outbox.COLLECTIONS)


def make_incident_store(data_dir: Path, url: str | None) -> ResourceStore:
    """Sentinel's incident store: ``<data_dir>/sentinel-incidents.db``, or MongoDB by ``url``."""
    return make_resource_store(
        name=STORE_NAME, collections=COLLECTIONS, migrations=MIGRATIONS, data_dir=data_dir, url=url
    )
