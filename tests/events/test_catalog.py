"""The event catalog is read from the contracts, and envelopes round-trip."""

from __future__ import annotations

import json

import pytest

from bhiv.integrations.v1 import event_pb2
from bhiv_core.events.catalog import UnknownEventType, body_of, envelope, event_types, payload_of, type_of


def test_the_catalog_holds_the_issue_s_event_types() -> None:
    assert set(event_types()) == {
        "logistics.shipment.status_changed",
        "crm.ticket.opened",
        "crm.ticket.resolved",
        "crm.lead.won",
        "sentinel.incident.opened",
        "orchestration.document.ingested",
        "integrations.webhook.test",
    }
    assert all(t.description.endswith(".") for t in event_types().values())


def test_an_envelope_round_trips_and_renders_the_documented_body() -> None:
    payload = event_pb2.TicketResolvedEvent(ticket="tickets/t1", customer="customers/c1", subject="Late")
    event = envelope(payload, source="crm", subject="tickets/t1", time=1_700_000_000)
    assert event.type == type_of(payload) == "crm.ticket.resolved"
    assert payload_of(event) == payload
    body = json.loads(body_of(event))
    assert body == {
        "id": event.id,
        "type": "crm.ticket.resolved",
        "source": "crm",
        "subject": "tickets/t1",
        "time": "2023-11-14T22:13:20Z",
        "data": {"ticket": "tickets/t1", "customer": "customers/c1", "subject": "Late", "assignee": ""},
    }


def test_a_payload_of_another_type_is_refused() -> None:
    event = envelope(event_pb2.LeadWonEvent(lead="leads/l1"), source="crm", subject="leads/l1", time=1.0)
    event.type = "crm.ticket.resolved"
    with pytest.raises(UnknownEventType):
        payload_of(event)
    event.type = "crm.nothing.happened"
    with pytest.raises(UnknownEventType):
        payload_of(event)
    with pytest.raises(UnknownEventType):
        type_of(event_pb2.Event())
