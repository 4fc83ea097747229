"""The threat loop end to end, through the real Envoy: traffic → detection → block at the edge →
alert → incident, and back (issue 11, item 9).

A client at 127.0.0.2 (ordinary generated stubs through :class:`tests.harness.Relay`) attacks; a
client at 127.0.0.1 (the allowlisted default) goes on working. Alerts land at a local
Slack-compatible webhook sink and a local SMTP server with STARTTLS (:mod:`tests.e2e.alerting`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from bhiv.sentinel.v1 import alert_service_pb2 as als
from bhiv.sentinel.v1 import alert_service_pb2_grpc as als_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.alerting import ALERT_ADDRESS, AlertSinks, alert_sinks, create_alert_channels
from tests.e2e.client import CALL_TIMEOUT, Session, admin_session
from tests.e2e.conftest import Collector, mesh_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def sinks(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AlertSinks]:
    with alert_sinks(tmp_path_factory.mktemp("alert-sinks")) as running:
        yield running


@pytest.fixture(scope="module")
async def loop_mesh(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Collector, str], sinks: AlertSinks
) -> AsyncIterator[Mesh]:
    """A mesh of its own, whose sentinel e-mails through the SMTP server of :func:`sinks`."""
    env = mesh_env(collector[1]) | sinks.env()
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("loop"), env=env, edge_rate_limit=100_000)
    async with started:
        yield started


@pytest.fixture(scope="module")
async def loop_admin(loop_mesh: Mesh) -> Session:
    return await admin_session(loop_mesh)


async def test_test_alerts_reach_the_slack_sink_and_the_smtp_server(
    loop_mesh: Mesh, loop_admin: Session, sinks: AlertSinks
) -> None:
    slack, email = await create_alert_channels(loop_mesh.edge_address, loop_admin, sinks)
    assert slack.target.endswith("/[redacted]")  # the webhook URL is a credential
    async with grpc.aio.insecure_channel(loop_mesh.edge_address) as channel:
        stub = als_grpc.AlertServiceStub(channel)
        for created in (slack, email):
            sent = await stub.SendTestAlert(
                als.SendTestAlertRequest(name=created.name),
                metadata=loop_admin.metadata,
                timeout=CALL_TIMEOUT,
            )
            assert (sent.delivered, sent.error) == (True, ""), created.display_name
    text = await sinks.slack_message(lambda text: "test" in text.lower())
    mail = await sinks.email(lambda message: ALERT_ADDRESS in str(message["To"]))
    print(f"\nSlack sink got: {text!r}\nSMTP server got: {mail['Subject']!r} for {mail['To']}")
