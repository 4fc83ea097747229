"""The agent: observations through a bounded queue to the detectors and the screen, detections to
the sink, never blocking a feed, surviving a failing sink.
"""

from __future__ import annotations

import asyncio
import time

from bhiv_core.agents.threat_detection import (
    Category,
    Detection,
    Observation,
    ObservationKind,
    ThreatDetectionAgent,
)
from bhiv_core.agents.threat_detection.detectors import BruteForceDetector


class ListSink:
    def __init__(self, fail_first: int = 0) -> None:
        self.detections: list[Detection] = []
        self.fail_first = fail_first

    async def record(self, detection: Detection) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("store down")
        self.detections.append(detection)


async def until(condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def failed(address: str) -> Observation:
    return Observation(ObservationKind.LOGIN_FAILED, address, "admin", "/bhiv.identity.v1.AuthService/Login")


async def test_observations_reach_the_detectors_and_detections_reach_the_sink() -> None:
    sink = ListSink()
    now = [0.0]
    agent = ThreatDetectionAgent(sink, clock=lambda: now[0])
    await agent.start()
    try:
        for _ in range(10):
            assert agent.submit(failed("203.0.113.7"))
        await until(lambda: len(sink.detections) == 2)
        assert [d.rule_id for d in sink.detections] == ["bruteforce.address", "bruteforce.account"]
        assert agent.detections == 2
    finally:
        await agent.stop()


async def test_request_text_fields_are_screened_off_the_callers_path() -> None:
    sink = ListSink()
    agent = ThreatDetectionAgent(sink, detectors=[])
    await agent.start()
    try:
        agent.submit(
            Observation(
                ObservationKind.CALL,
                "203.0.113.8",
                "users/eve",
                "/bhiv.crm.v1.TicketService/CreateTicket",
                status="OK",
                fields=(
                    ("ticket.title", "What's dharma?"),
                    ("ticket.description", "x' UNION SELECT password--"),
                ),
            )
        )
        await until(lambda: len(sink.detections) == 1)
        [detection] = sink.detections
        assert detection.category is Category.INJECTION and detection.rule_id == "sql.union_select"
        assert "field ticket.description" in detection.evidence
        assert (detection.source_address, detection.principal) == ("203.0.113.8", "users/eve")
    finally:
        await agent.stop()


def test_a_field_sent_in_several_excerpts_is_detected_once_per_rule() -> None:
    agent = ThreatDetectionAgent(ListSink(), detectors=[])
    excerpt = "x'; DROP TABLE tickets;--"
    observation = Observation(
        ObservationKind.SUSPICIOUS_INPUT,
        "203.0.113.8",
        fields=(("ticket.title", excerpt), ("ticket.title", excerpt), ("ticket.description", excerpt)),
    )
    found = [
        (d.rule_id, "ticket.title" if "field ticket.title:" in d.evidence else "ticket.description")
        for d in agent.detect(observation, 0.0)
    ]
    assert ("sql.stacked_query", "ticket.title") in found
    assert len(found) == len(set(found))
    assert {field for _, field in found} == {"ticket.title", "ticket.description"}


async def test_a_full_queue_drops_and_counts_instead_of_blocking_the_feed() -> None:
    agent = ThreatDetectionAgent(ListSink(), detectors=[], queue_size=3)  # not started: nothing drains
    results = [agent.submit(failed("203.0.113.7")) for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert (agent.accepted, agent.dropped) == (3, 2)


async def test_a_failing_sink_is_counted_and_detection_goes_on() -> None:
    sink = ListSink(fail_first=1)
    detector = BruteForceDetector(per_address=1, per_account=100)
    agent = ThreatDetectionAgent(sink, detectors=[detector])
    await agent.start()
    try:
        agent.submit(failed("203.0.113.1"))
        agent.submit(failed("203.0.113.2"))
        await until(lambda: len(sink.detections) == 1)
        assert agent.failed == 1
        assert sink.detections[0].source_address == "203.0.113.2"
    finally:
        await agent.stop()
