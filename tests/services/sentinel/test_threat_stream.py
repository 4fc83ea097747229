"""The live fan-out behind StreamThreatEvents: filters, a bound per subscriber, a clean close.

The server-level behaviour (filters over gRPC, the subscriber limit, shutdown) is tested in
test_incidents.py; here the hub's bound is driven directly, since a real client's transport
buffers (HTTP/2 windows, socket buffers) make "a slow reader" a matter of timing over the wire.
"""

from __future__ import annotations

import pytest

from bhiv.sentinel.v1 import threat_pb2 as tp
from bhiv_core.runtime.errors import ResourceExhausted, Unavailable
from bhiv_core.services.sentinel.incidents.stream import ThreatEventHub


def event(
    n: int, severity: int = tp.SEVERITY_HIGH, category: int = tp.THREAT_CATEGORY_INJECTION
) -> tp.ThreatEvent:
    return tp.ThreatEvent(event_id=f"e{n}", severity=severity, category=category)  # type: ignore[arg-type]


async def test_a_subscriber_that_falls_behind_is_cut_off_and_its_buffer_freed_while_others_go_on() -> None:
    hub = ThreatEventHub(buffer=8)
    slow = hub.subscribe()
    fast = hub.subscribe()
    received = []
    for n in range(100):
        hub.publish(event(n))  # never waits, whoever reads
        got = await fast.next()
        assert got is not None
        received.append(got.event_id)
    assert received == [f"e{n}" for n in range(100)]
    assert slow.cut_off and slow.missed == 9
    assert hub.subscribers == 1 and hub.cut_off == 1
    with pytest.raises(ResourceExhausted) as err:
        await slow.next()
    assert err.value.reason == "STREAM_TOO_SLOW"
    assert err.value.quota_violations


async def test_a_subscriber_within_its_buffer_misses_nothing() -> None:
    hub = ThreatEventHub(buffer=8)
    reader = hub.subscribe()
    for n in range(8):
        hub.publish(event(n))
    assert [(await reader.next()).event_id for _ in range(8)] == [f"e{n}" for n in range(8)]  # type: ignore[union-attr]
    assert not reader.cut_off


async def test_filters_pick_severity_and_category() -> None:
    hub = ThreatEventHub()
    critical = hub.subscribe(min_severity=tp.SEVERITY_CRITICAL)
    floods = hub.subscribe(category=tp.THREAT_CATEGORY_FLOOD)
    hub.publish(event(1, tp.SEVERITY_HIGH, tp.THREAT_CATEGORY_FLOOD))
    hub.publish(event(2, tp.SEVERITY_CRITICAL, tp.THREAT_CATEGORY_INJECTION))
    hub.close()
    assert [e.event_id for e in [await critical.next()] if e] == ["e2"]
    assert [e.event_id for e in [await floods.next()] if e] == ["e1"]
    # After close: what was buffered, then the end.
    assert await critical.next() is None
    assert await floods.next() is None


async def test_a_closed_hub_refuses_new_subscribers_and_limits_open_ones() -> None:
    hub = ThreatEventHub(max_subscribers=2)
    hub.subscribe()
    second = hub.subscribe()
    with pytest.raises(ResourceExhausted):
        hub.subscribe()
    hub.remove(second)
    hub.subscribe()
    hub.close()
    with pytest.raises(Unavailable):
        hub.subscribe()
