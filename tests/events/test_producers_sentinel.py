"""Sentinel publishes ``sentinel.incident.opened`` in the transaction that opens an incident."""

from __future__ import annotations

from pathlib import Path

from bhiv.integrations.v1 import event_pb2
from bhiv_core.events.catalog import payload_of
from tests.events.conftest import stored_events
from tests.services.sentinel.test_incidents import eventually, serve_sentinel


async def test_each_incident_opened_publishes_one_event_with_its_fields(tmp_path: Path) -> None:
    db = tmp_path / "sentinel-incidents.db"
    async with serve_sentinel(tmp_path, EVENTS_RELAY="off") as sentinel:
        # 30 failed logins: several detections of one rule and source, grouped into one incident.
        await sentinel.failed_logins("203.0.113.7", "admin", 30)
        incident = await sentinel.incident_of("203.0.113.7")
        incidents = await sentinel.incidents()

        async def published() -> list[event_pb2.Event]:
            found = stored_events(db)
            return found if len(found) == len(incidents) else []

        events = await eventually(published, deadline=60.0)
    assert sorted(e.subject for e in events) == sorted(i.name for i in incidents)  # one event each
    (event,) = [e for e in events if e.subject == incident.name]
    assert (event.type, event.source) == ("sentinel.incident.opened", "sentinel")
    assert payload_of(event) == event_pb2.IncidentOpenedEvent(
        incident=incident.name,
        category="THREAT_CATEGORY_BRUTE_FORCE",
        severity="SEVERITY_HIGH",
        title=incident.title,
        source_address="203.0.113.7",
    )
