"""AlertService and alert delivery against real receivers on loopback.

Sentinel's alerts are served behind the real error mapper, RBAC (the contract's permissions) and
validation; the receivers are a real HTTP sink (Slack-style and signed generic webhooks) and a
real SMTP server (aiosmtpd). Dedup and rate limits run on an injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.sentinel.v1 import alert_pb2, alert_service_pb2_grpc, threat_pb2
from bhiv.sentinel.v1 import alert_service_pb2 as als
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.outbound.signatures import verify_signature
from bhiv_core.runtime.chain import chain_order
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.services.sentinel.alerts.delivery import Outcome
from bhiv_core.services.sentinel.alerts.service import Alerts
from tests.harness import config_for, serving
from tests.services.crm.conftest import AsCaller, Clock, as_, reason, refused, violations
from tests.services.sentinel.alert_sinks import http_sink, self_signed, smtp_server

ADMIN = as_("admin")
OPS = as_("ops")
SALES = as_("sales")
SECRET = "k" * 24
SECRET_PATH = "XXXXsecretpath"
ALERT_SERVICE = next(s for s in services_of_package("bhiv.sentinel.v1") if s.name == "AlertService")
PENDING, DELIVERED, FAILED = (
    alert_pb2.ALERT_STATUS_PENDING,
    alert_pb2.ALERT_STATUS_DELIVERED,
    alert_pb2.ALERT_STATUS_FAILED,
)
SLACK = alert_pb2.ALERT_CHANNEL_KIND_SLACK_WEBHOOK
EMAIL = alert_pb2.ALERT_CHANNEL_KIND_EMAIL
GENERIC = alert_pb2.ALERT_CHANNEL_KIND_GENERIC_WEBHOOK


def chain(*_: Any) -> Any:
    return chain_order(
        errors=ErrorMappingInterceptor("sentinel.bhiv.core"),
        auth=AsCaller(),
        rbac=RbacInterceptor(RolePolicy()),
        validation=ValidationInterceptor(),
    )


@dataclass
class Served:
    stub: alert_service_pb2_grpc.AlertServiceAsyncStub
    alerts: Alerts
    data_dir: Path

    async def channel(
        self, kind: int, target: str, secret: str = "", **fields: Any
    ) -> alert_pb2.AlertChannel:
        fields.setdefault("enabled", True)
        request = als.CreateAlertChannelRequest(
            alert_channel=alert_pb2.AlertChannel(display_name="ops", kind=kind, target=target, **fields),
            secret=secret,
        )
        return (await self.stub.CreateAlertChannel(request, metadata=ADMIN)).alert_channel

    async def alerts_of(self, channel: str) -> list[alert_pb2.Alert]:
        listed = await self.stub.ListAlerts(als.ListAlertsRequest(channel=channel), metadata=ADMIN)
        return list(listed.alerts)


@contextlib.asynccontextmanager
async def serve_alerts(
    data_dir: Path, clock: Callable[[], float] = time.time, **env: str
) -> AsyncIterator[Served]:
    """Sentinel's AlertService on ``data_dir`` with its delivery loop running."""
    config = config_for("sentinel", DATA_DIR=str(data_dir), **env)
    alerts = Alerts.from_config(config, clock=clock)
    await alerts.start()
    try:
        async with serving([(ALERT_SERVICE, alerts.servicer)], chain=chain, config=config) as (_, channel):
            yield Served(alert_service_pb2_grpc.AlertServiceStub(channel), alerts, data_dir)
    finally:
        await alerts.stop()


async def eventually(check: Callable[[], Any], deadline: float = 20.0) -> Any:
    """Polls ``check`` (a coroutine function) until it returns something truthy."""
    end = time.monotonic() + deadline
    while True:
        value = await check()
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(0.05)


def assert_sealed_at_rest(data_dir: Path) -> None:
    """The store's files never hold the webhook's path; the key file is owner-only."""
    stored = b"".join(p.read_bytes() for p in data_dir.glob("sentinel-alerts.db*"))
    assert stored and SECRET_PATH.encode() not in stored
    assert stat.S_IMODE((data_dir / "sentinel-alert-kek").stat().st_mode) == 0o600


async def test_slack_webhook_url_is_redacted_on_every_read_and_encrypted_at_rest(tmp_path: Path) -> None:
    with http_sink() as sink:
        async with serve_alerts(tmp_path) as served:
            created = await served.channel(SLACK, sink.url)
            port = sink.url.split(":")[2].split("/")[0]
            assert created.target == f"http://127.0.0.1:{port}/[redacted]"
            assert not created.has_secret
            got = (
                await served.stub.GetAlertChannel(
                    als.GetAlertChannelRequest(name=created.name), metadata=ADMIN
                )
            ).alert_channel
            listed = (
                await served.stub.ListAlertChannels(als.ListAlertChannelsRequest(), metadata=OPS)
            ).alert_channels
            updated = (
                await served.stub.UpdateAlertChannel(
                    als.UpdateAlertChannelRequest(
                        alert_channel=alert_pb2.AlertChannel(name=created.name, display_name="on call"),
                        update_mask=FieldMask(paths=["display_name"]),
                    ),
                    metadata=ADMIN,
                )
            ).alert_channel
            for read in (got, *listed, updated):
                assert SECRET_PATH not in str(read)
                assert read.target == created.target
            assert updated.display_name == "on call"
            # The kept (sealed) URL is still what delivery uses.
            sent = await served.stub.SendTestAlert(
                als.SendTestAlertRequest(name=created.name), metadata=ADMIN
            )
            assert (sent.delivered, sent.attempts, sent.error) == (True, 1, "")
            assert sink.requests[0].path == "/hooks/T000/B000/XXXXsecretpath"
            assert "*[LOW]*" in json.loads(sink.requests[0].body)["text"]
    assert_sealed_at_rest(tmp_path)


async def test_generic_webhook_is_signed_over_timestamp_and_body_and_its_secret_never_returned(
    tmp_path: Path,
) -> None:
    with http_sink() as sink:
        async with serve_alerts(tmp_path) as served:
            created = await served.channel(GENERIC, sink.url, SECRET)
            assert created.has_secret
            assert SECRET not in str(created)
            sent = await served.stub.SendTestAlert(
                als.SendTestAlertRequest(name=created.name), metadata=ADMIN
            )
            assert sent.delivered
            assert sent.alert.test and sent.alert.status == DELIVERED
            request = sink.requests[0]
            header = request.headers["x-bhiv-signature"]
            assert verify_signature(SECRET.encode(), header, request.body, time.time())
            assert not verify_signature(b"another key of 24 chars!", header, request.body, time.time())
            assert not verify_signature(SECRET.encode(), header, request.body + b" ", time.time())
            # A captured request replayed later than the window is refused by the receiver.
            assert not verify_signature(SECRET.encode(), header, request.body, time.time() + 301)
            assert request.headers["x-bhiv-alert"] == sent.alert.name
            document = json.loads(request.body)
            assert document["test"] is True and document["channel"] == created.name

            # Kind changes away from the generic webhook remove the key.
            updated = (
                await served.stub.UpdateAlertChannel(
                    als.UpdateAlertChannelRequest(
                        alert_channel=alert_pb2.AlertChannel(name=created.name, kind=SLACK),
                        update_mask=FieldMask(paths=["kind"]),
                    ),
                    metadata=ADMIN,
                )
            ).alert_channel
            assert not updated.has_secret


async def test_email_channel_delivers_through_the_smtp_relay(tmp_path: Path) -> None:
    with smtp_server() as (port, mail):
        env = {"ALERT_SMTP_HOST": "127.0.0.1", "ALERT_SMTP_PORT": str(port), "ALERT_SMTP_STARTTLS": "false"}
        async with serve_alerts(tmp_path, **env) as served:
            created = await served.channel(EMAIL, "admin@example.org")
            assert created.target == "admin@example.org"  # an address is not a secret
            raised = await served.alerts.dispatcher.raise_alert(
                "brute_force",
                threat_pb2.SEVERITY_HIGH,
                "Brute force from 192.0.2.7",
                "42 failures",
                "bf:192.0.2.7",
                incident="incidents/abc",
            )
            assert [r.outcome for r in raised] == [Outcome.QUEUED]

            async def delivered() -> bool:
                return [a.status for a in await served.alerts_of(created.name)] == [DELIVERED]

            assert await eventually(delivered)
    sender, recipients, message = mail[0]
    assert (sender, recipients) == ("bhiv-sentinel@localhost", ["admin@example.org"])
    assert message["Subject"] == "[BHIV HIGH] Brute force from 192.0.2.7"
    assert "incidents/abc" in message.get_payload()


async def test_email_goes_over_starttls_to_a_verified_relay_and_never_in_plain_text(tmp_path: Path) -> None:
    cert, key = await asyncio.to_thread(self_signed, tmp_path)
    with smtp_server(tls=(cert, key)) as (port, mail):
        env = {"ALERT_SMTP_HOST": "127.0.0.1", "ALERT_SMTP_PORT": str(port), "ALERT_BACKOFF_SECONDS": "0.01"}
        # Without the relay's CA the certificate does not verify: nothing is sent.
        async with serve_alerts(tmp_path / "untrusted", **env) as served:
            created = await served.channel(EMAIL, "admin@example.org")
            sent = await served.stub.SendTestAlert(
                als.SendTestAlertRequest(name=created.name), metadata=ADMIN
            )
            assert not sent.delivered
            assert "CERTIFICATE_VERIFY_FAILED" in sent.error
        async with serve_alerts(tmp_path / "trusted", ALERT_SMTP_CA_FILE=str(cert), **env) as served:
            created = await served.channel(EMAIL, "admin@example.org")
            sent = await served.stub.SendTestAlert(
                als.SendTestAlertRequest(name=created.name), metadata=ADMIN
            )
            assert (sent.delivered, sent.attempts, sent.error) == (True, 1, "")
    assert [recipients for _, recipients, _ in mail] == [["admin@example.org"]]


async def test_email_without_a_relay_fails_saying_so(tmp_path: Path) -> None:
    async with serve_alerts(tmp_path, ALERT_BACKOFF_SECONDS="0.01") as served:
        created = await served.channel(EMAIL, "admin@example.org")
        sent = await served.stub.SendTestAlert(als.SendTestAlertRequest(name=created.name), metadata=ADMIN)
        assert (sent.delivered, sent.attempts) == (False, 3)
        assert "BHIV_ALERT_SMTP_HOST" in sent.error
        assert sent.alert.status == FAILED


async def test_raised_alert_is_retried_with_backoff_until_the_sink_accepts(tmp_path: Path) -> None:
    with http_sink(fail=2) as sink:
        async with serve_alerts(tmp_path, ALERT_BACKOFF_SECONDS="0.05") as served:
            created = await served.channel(SLACK, sink.url)
            await served.alerts.dispatcher.raise_alert(
                "flood", threat_pb2.SEVERITY_HIGH, "Flood", "", "flood:1"
            )

            async def settled() -> list[alert_pb2.Alert]:
                alerts = await served.alerts_of(created.name)
                return alerts if alerts and alerts[0].status != PENDING else []

            (alert,) = await eventually(settled)
    assert (alert.status, alert.attempts, alert.error) == (DELIVERED, 3, "")
    assert alert.HasField("last_attempt_time")
    assert len(sink.requests) == 3


async def test_delivery_stops_after_the_last_attempt_and_records_the_error(tmp_path: Path) -> None:
    with http_sink(status=503) as sink:
        env = {"ALERT_BACKOFF_SECONDS": "0.01", "ALERT_MAX_ATTEMPTS": "2"}
        async with serve_alerts(tmp_path, **env) as served:
            created = await served.channel(SLACK, sink.url)
            await served.alerts.dispatcher.raise_alert(
                "flood", threat_pb2.SEVERITY_HIGH, "Flood", "", "flood:1"
            )

            async def failed() -> list[alert_pb2.Alert]:
                return [a for a in await served.alerts_of(created.name) if a.status == FAILED]

            (alert,) = await eventually(failed)
            assert (alert.attempts, alert.error) == (2, "the endpoint answered HTTP 503")
            await asyncio.sleep(0.2)
            assert len(sink.requests) == 2


async def test_send_test_alert_reports_a_failed_delivery_in_the_response(tmp_path: Path) -> None:
    with http_sink(fail=5) as sink:
        async with serve_alerts(tmp_path, ALERT_BACKOFF_SECONDS="0.01") as served:
            created = await served.channel(GENERIC, sink.url, enabled=False)  # disabled: tested anyway
            sent = await served.stub.SendTestAlert(
                als.SendTestAlertRequest(name=created.name), metadata=ADMIN
            )
            assert (sent.delivered, sent.attempts, sent.error) == (False, 3, "the endpoint answered HTTP 500")
            assert "x-bhiv-signature" not in sink.requests[0].headers  # no secret, no signature
            listed = await served.stub.ListAlerts(als.ListAlertsRequest(status=FAILED), metadata=OPS)
            assert [a.name for a in listed.alerts] == [sent.alert.name]
            missing = await refused(
                served.stub.SendTestAlert(als.SendTestAlertRequest(name="alertChannels/nope"), metadata=ADMIN)
            )
            assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_same_dedup_key_within_the_window_is_sent_once(tmp_path: Path) -> None:
    clock = Clock()
    with http_sink() as sink:
        async with serve_alerts(tmp_path, clock, ALERT_DEDUP_SECONDS="300") as served:
            await served.channel(SLACK, sink.url)
            raise_ = served.alerts.dispatcher.raise_alert
            first = await raise_(
                "sqli", threat_pb2.SEVERITY_HIGH, "SQLi from 192.0.2.9", "", "sqli:192.0.2.9"
            )
            again = await raise_(
                "sqli", threat_pb2.SEVERITY_HIGH, "SQLi from 192.0.2.9", "", "sqli:192.0.2.9"
            )
            other = await raise_(
                "sqli", threat_pb2.SEVERITY_HIGH, "SQLi from 192.0.2.10", "", "sqli:192.0.2.10"
            )
            clock.offset = 301
            later = await raise_(
                "sqli", threat_pb2.SEVERITY_HIGH, "SQLi from 192.0.2.9", "", "sqli:192.0.2.9"
            )
    outcomes = [r.outcome for batch in (first, again, other, later) for r in batch]
    assert outcomes == [Outcome.QUEUED, Outcome.DUPLICATE, Outcome.QUEUED, Outcome.QUEUED]


async def test_rate_limit_caps_the_alerts_one_channel_gets_per_window(tmp_path: Path) -> None:
    clock = Clock()
    with http_sink() as sink:
        env = {"ALERT_RATE_LIMIT": "3", "ALERT_RATE_WINDOW_SECONDS": "60"}
        async with serve_alerts(tmp_path, clock, **env) as served:
            created = await served.channel(SLACK, sink.url)
            raise_ = served.alerts.dispatcher.raise_alert
            flood = [
                await raise_("scan", threat_pb2.SEVERITY_HIGH, f"Scan {i}", "", f"scan:{i}") for i in range(5)
            ]
            assert [batch[0].outcome for batch in flood] == [Outcome.QUEUED] * 3 + [Outcome.RATE_LIMITED] * 2
            assert len(await served.alerts_of(created.name)) == 3
            clock.offset = 61
            after = await raise_("scan", threat_pb2.SEVERITY_HIGH, "Scan 9", "", "scan:9")
            assert after[0].outcome == Outcome.QUEUED

            async def all_sent() -> bool:
                return len(sink.requests) == 4

            assert await eventually(all_sent)


async def test_raise_alert_skips_disabled_channels_and_those_above_its_severity(tmp_path: Path) -> None:
    with http_sink() as sink:
        async with serve_alerts(tmp_path) as served:
            critical_only = await served.channel(SLACK, sink.url, min_severity=threat_pb2.SEVERITY_CRITICAL)
            await served.channel(SLACK, sink.url, enabled=False)
            every = await served.channel(SLACK, sink.url)
            raised = await served.alerts.dispatcher.raise_alert(
                "x", threat_pb2.SEVERITY_HIGH, "High", "", "k"
            )
            assert [r.channel for r in raised] == [every.name]
            raised = await served.alerts.dispatcher.raise_alert(
                "x", threat_pb2.SEVERITY_CRITICAL, "Crit", "", "c"
            )
            assert sorted(r.channel for r in raised) == sorted([every.name, critical_only.name])


async def test_alert_permissions_follow_the_contract(tmp_path: Path) -> None:
    with http_sink() as sink:
        async with serve_alerts(tmp_path) as served:
            created = await served.channel(SLACK, sink.url)
            get = als.GetAlertChannelRequest(name=created.name)
            assert (await served.stub.GetAlertChannel(get, metadata=OPS)).alert_channel.name == created.name
            await served.stub.ListAlerts(als.ListAlertsRequest(), metadata=OPS)
            create = als.CreateAlertChannelRequest(
                alert_channel=alert_pb2.AlertChannel(display_name="x", kind=SLACK, target=sink.url)
            )
            denied = [
                served.stub.CreateAlertChannel(create, metadata=OPS),
                served.stub.SendTestAlert(als.SendTestAlertRequest(name=created.name), metadata=OPS),
                served.stub.DeleteAlertChannel(
                    als.DeleteAlertChannelRequest(name=created.name), metadata=OPS
                ),
                served.stub.GetAlertChannel(get, metadata=SALES),
                served.stub.ListAlerts(
                    als.ListAlertsRequest(), metadata=as_("customer", customer="customers/c")
                ),
            ]
            for call in denied:
                assert (await refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED
            await served.stub.DeleteAlertChannel(
                als.DeleteAlertChannelRequest(name=created.name), metadata=ADMIN
            )
            gone = await refused(served.stub.GetAlertChannel(get, metadata=ADMIN))
            assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_channels_are_invalid_argument_with_field_violations(tmp_path: Path) -> None:
    async with serve_alerts(tmp_path) as served:

        async def create(kind: int, target: str, secret: str = "", name: str = "x") -> grpc.aio.AioRpcError:
            channel = alert_pb2.AlertChannel(display_name=name, kind=kind, target=target)
            request = als.CreateAlertChannelRequest(alert_channel=channel, secret=secret)
            return await refused(served.stub.CreateAlertChannel(request, metadata=ADMIN))

        cases = [
            (await create(SLACK, "https://hooks.example/x", SECRET), [("secret", "NOT_ALLOWED")]),
            (await create(SLACK, "http://hooks.example/x"), [("alert_channel.target", "TARGET_MISMATCH")]),
            (
                await create(SLACK, "https://hooks.example/[redacted]"),
                [("alert_channel.target", "TARGET_MISMATCH")],
            ),
            (await create(GENERIC, "ftp://x/y"), [("alert_channel.target", "TARGET_MISMATCH")]),
            (await create(GENERIC, "https://x/y", "short"), [("secret", "BAD_LENGTH")]),
            (await create(EMAIL, "a@b.org\r\nBcc: x@y.org"), [("alert_channel.target", "TARGET_MISMATCH")]),
            (
                await create(alert_pb2.ALERT_CHANNEL_KIND_UNSPECIFIED, "", name=" "),
                [
                    ("alert_channel.display_name", "REQUIRED"),
                    ("alert_channel.kind", "REQUIRED"),
                    ("alert_channel.target", "REQUIRED"),
                ],
            ),
        ]
        for err, expected in cases:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violations(err) == expected
            assert SECRET not in (err.details() or "")

        created = await served.channel(EMAIL, "admin@example.org")
        update = als.UpdateAlertChannelRequest(
            alert_channel=alert_pb2.AlertChannel(name=created.name, kind=SLACK),
            update_mask=FieldMask(paths=["secret", "kind", "has_secret", "nope"]),
        )
        err = await refused(served.stub.UpdateAlertChannel(update, metadata=ADMIN))
        assert violations(err) == [
            ("update_mask.paths[2]", "OUTPUT_ONLY"),
            ("update_mask.paths[3]", "UNKNOWN_FIELD"),
        ]
        # An e-mail address does not fit a Slack channel: the kind alone cannot change.
        update = als.UpdateAlertChannelRequest(
            alert_channel=alert_pb2.AlertChannel(name=created.name, kind=SLACK),
            update_mask=FieldMask(paths=["kind"]),
        )
        err = await refused(served.stub.UpdateAlertChannel(update, metadata=ADMIN))
        assert violations(err) == [("alert_channel.target", "TARGET_MISMATCH")]
        stale = als.UpdateAlertChannelRequest(
            alert_channel=alert_pb2.AlertChannel(name=created.name, etag="0" * 16, display_name="y"),
            update_mask=FieldMask(paths=["display_name"]),
        )
        err = await refused(served.stub.UpdateAlertChannel(stale, metadata=ADMIN))
        assert (err.code(), reason(err)) == (grpc.StatusCode.ABORTED, "STALE_ETAG")
        start = alert_pb2.Alert().create_time
        start.FromSeconds(2000)
        end = alert_pb2.Alert().create_time
        end.FromSeconds(1000)
        err = await refused(
            served.stub.ListAlerts(als.ListAlertsRequest(start_time=start, end_time=end), metadata=ADMIN)
        )
        assert violations(err) == [("end_time", "BAD_RANGE")]


async def test_secret_update_replaces_or_removes_the_key(tmp_path: Path) -> None:
    with http_sink() as sink:
        async with serve_alerts(tmp_path) as served:
            created = await served.channel(GENERIC, sink.url)
            assert not created.has_secret

            async def set_secret(secret: str) -> alert_pb2.AlertChannel:
                request = als.UpdateAlertChannelRequest(
                    alert_channel=alert_pb2.AlertChannel(name=created.name),
                    update_mask=FieldMask(paths=["secret"]),
                    secret=secret,
                )
                return (await served.stub.UpdateAlertChannel(request, metadata=ADMIN)).alert_channel

            assert (await set_secret(SECRET)).has_secret
            await served.stub.SendTestAlert(als.SendTestAlertRequest(name=created.name), metadata=ADMIN)
            request = sink.requests[-1]
            assert verify_signature(
                SECRET.encode(), request.headers["x-bhiv-signature"], request.body, time.time()
            )
            assert not (await set_secret("")).has_secret


async def test_create_with_a_request_id_is_idempotent(tmp_path: Path) -> None:
    with http_sink() as sink:
        async with serve_alerts(tmp_path) as served:
            channel = alert_pb2.AlertChannel(display_name="x", kind=GENERIC, target=sink.url)
            request = als.CreateAlertChannelRequest(alert_channel=channel, secret=SECRET, request_id="r1")
            first = await served.stub.CreateAlertChannel(request, metadata=ADMIN)
            again = await served.stub.CreateAlertChannel(request, metadata=ADMIN)
            assert first == again
            request.secret = "another secret of 24 ch"
            err = await refused(served.stub.CreateAlertChannel(request, metadata=ADMIN))
            assert violations(err) == [("request_id", "REQUEST_ID_REUSED")]
            listed = await served.stub.ListAlertChannels(
                als.ListAlertChannelsRequest(kind=GENERIC), metadata=ADMIN
            )
            assert len(listed.alert_channels) == 1


async def test_a_webhook_channel_never_reaches_a_cloud_metadata_address(tmp_path: Path) -> None:
    # Webhooks leave through the shared outbound client: internal receivers are allowed (admins
    # configure channels), the metadata endpoints in no form.
    async with serve_alerts(tmp_path, ALERT_BACKOFF_SECONDS="0.01") as served:
        for target in ("http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/x"):
            created = await served.channel(GENERIC, target)
            sent = await served.stub.SendTestAlert(
                als.SendTestAlertRequest(name=created.name), metadata=ADMIN
            )
            assert not sent.delivered and "metadata" in sent.error, sent.error
