"""Where a mesh's alerts land in the e2e tests: a Slack-compatible incoming-webhook sink and an SMTP
server with STARTTLS (aiosmtpd), both real and on loopback, and the alert channels pointing at them.

The receivers themselves are the alert tests' (``tests.services.sentinel.alert_sinks``); this module
starts them before a mesh (sentinel reads its SMTP relay from ``BHIV_ALERT_SMTP_*`` at start) and
creates the channels through the edge, as an admin would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import grpc

from bhiv.sentinel.v1 import alert_pb2, threat_pb2
from bhiv.sentinel.v1 import alert_service_pb2 as als
from bhiv.sentinel.v1 import alert_service_pb2_grpc as als_grpc
from tests.e2e.client import CALL_TIMEOUT, Session
from tests.services.sentinel.alert_sinks import HttpSink, http_sink, self_signed, smtp_server

ALERT_ADDRESS = "security@example.org"
"""Where the e-mail channel sends."""

DELIVERY_DEADLINE = 60.0
"""Seconds a test waits for an alert to arrive (delivery is an outbox with retries)."""


@dataclass
class AlertSinks:
    """The running receivers and what they got."""

    slack: HttpSink
    smtp_port: int
    mail: list[tuple[str, list[str], Message]]
    ca_file: Path

    def env(self) -> dict[str, str]:
        """The sentinel settings that send e-mail to this SMTP server, over verified STARTTLS."""
        return {
            "BHIV_ALERT_SMTP_HOST": "127.0.0.1",
            "BHIV_ALERT_SMTP_PORT": str(self.smtp_port),
            "BHIV_ALERT_SMTP_CA_FILE": str(self.ca_file),
            "BHIV_ALERT_BACKOFF_SECONDS": "0.2",
        }

    def slack_texts(self) -> list[str]:
        """The ``text`` of every Slack message the sink received, in order."""
        with self.slack.lock:
            bodies = [captured.body for captured in self.slack.requests]
        return [str(json.loads(body)["text"]) for body in bodies]

    async def slack_message(self, match: Callable[[str], bool], deadline: float = DELIVERY_DEADLINE) -> str:
        """The first Slack message ``match`` accepts, waiting for it; fails after ``deadline``."""
        return await _first(self.slack_texts, match, deadline, "no Slack message matched")

    async def email(self, match: Callable[[Message], bool], deadline: float = DELIVERY_DEADLINE) -> Message:
        """The first e-mail ``match`` accepts, waiting for it; fails after ``deadline``."""

        def messages() -> list[Message]:
            return [message for _, _, message in list(self.mail)]

        return await _first(messages, match, deadline, "no e-mail matched")


async def _first(
    items: Callable[[], list[Any]], match: Callable[[Any], bool], deadline: float, why: str
) -> Any:
    end = time.monotonic() + deadline
    while True:
        found = [item for item in items() if match(item)]
        if found:
            return found[0]
        if time.monotonic() > end:
            raise AssertionError(f"{why} within {deadline:g}s; received: {items()!r}")
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def alert_sinks(directory: Path) -> Iterator[AlertSinks]:
    """Starts the Slack sink and an SMTP server offering STARTTLS with a certificate made here."""
    cert, key = self_signed(directory)
    with http_sink() as slack, smtp_server(tls=(cert, key)) as (port, mail):
        yield AlertSinks(slack=slack, smtp_port=port, mail=mail, ca_file=cert)


async def create_alert_channels(
    edge: str, admin: Session, sinks: AlertSinks, min_severity: int = threat_pb2.SEVERITY_UNSPECIFIED
) -> tuple[alert_pb2.AlertChannel, alert_pb2.AlertChannel]:
    """Creates, through ``edge``, a Slack channel to the sink and an e-mail channel to the SMTP server."""
    async with grpc.aio.insecure_channel(edge) as channel:
        stub = als_grpc.AlertServiceStub(channel)
        created = []
        for kind, target, display in (
            (alert_pb2.ALERT_CHANNEL_KIND_SLACK_WEBHOOK, sinks.slack.url, "security Slack"),
            (alert_pb2.ALERT_CHANNEL_KIND_EMAIL, ALERT_ADDRESS, "security e-mail"),
        ):
            reply = await stub.CreateAlertChannel(
                als.CreateAlertChannelRequest(
                    alert_channel=alert_pb2.AlertChannel(
                        display_name=display,
                        kind=kind,
                        target=target,
                        enabled=True,
                        min_severity=min_severity,
                    )
                ),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
            created.append(reply.alert_channel)
    return created[0], created[1]
