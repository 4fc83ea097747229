"""Revocations are pushed: a logout, a demotion or a disabled user is refused at another service at once.

In this mesh every service's safety-net poll of ``ListRevocations`` is an hour apart
(``BHIV_REVOCATION_POLL_SECONDS`` in conftest), so only identity's ``WatchRevocations`` push can
explain a refusal seen within the test's deadline. The deadline is generous so that a loaded
machine does not fail the test; the time actually taken is recorded in the test's user properties
(``--junitxml`` shows it) and measured properly by ``make bench``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
import pytest

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, create_user

pytestmark = pytest.mark.e2e

DEADLINE = 20.0
"""Seconds the test waits for a refusal that takes milliseconds: far below the hour-long poll."""


async def crm_code(channel: grpc.aio.Channel, session: Session) -> grpc.StatusCode:
    """The code crm answers ``ListCustomers`` with: UNIMPLEMENTED once the token passed auth."""
    try:
        await cs_grpc.CustomerServiceStub(channel).ListCustomers(
            cs.ListCustomersRequest(), metadata=session.metadata, timeout=CALL_TIMEOUT
        )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def logout(channel: grpc.aio.Channel, admin: Session, session: Session) -> None:
    request = auth.LogoutRequest(refresh_token=session.refresh_token)
    await auth_grpc.AuthServiceStub(channel).Logout(request, metadata=session.metadata, timeout=CALL_TIMEOUT)


async def demote(channel: grpc.aio.Channel, admin: Session, session: Session) -> None:
    request = us.UpdateUserRequest(user=user_pb2.User(name=session.user.name, role=user_pb2.ROLE_SUPPORT))
    request.update_mask.paths.append("role")
    await us_grpc.UserServiceStub(channel).UpdateUser(request, metadata=admin.metadata, timeout=CALL_TIMEOUT)


async def disable(channel: grpc.aio.Channel, admin: Session, session: Session) -> None:
    await us_grpc.UserServiceStub(channel).DisableUser(
        us.DisableUserRequest(name=session.user.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
    )


REVOKE: dict[str, Callable[[grpc.aio.Channel, Session, Session], Awaitable[None]]] = {
    "logout": logout,
    "demotion": demote,
    "disabled user": disable,
}


@pytest.mark.parametrize("revoke", REVOKE)
async def test_a_revocation_is_honoured_at_another_service_without_waiting_for_a_poll(
    mesh: Mesh, admin: Session, revoke: str, request: pytest.FixtureRequest
) -> None:
    session = await create_user(mesh, admin, "sales")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        # Valid at crm, and now in crm's verified-token cache: the revocation must reach the cache.
        assert await crm_code(channel, session) == grpc.StatusCode.UNIMPLEMENTED
        await REVOKE[revoke](channel, admin, session)
        revoked_at = time.monotonic()
        code = grpc.StatusCode.UNIMPLEMENTED
        while code == grpc.StatusCode.UNIMPLEMENTED and time.monotonic() - revoked_at < DEADLINE:
            code = await crm_code(channel, session)
        elapsed = round(time.monotonic() - revoked_at, 4)
        request.node.user_properties.append(("seconds_to_refusal_at_crm", elapsed))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_revocation_watch_is_refused_at_the_edge_and_served_to_direct_callers(mesh: Mesh) -> None:
    # Through the edge, anyone could hold every watcher slot of identity and keep the services from
    # reconnecting; services watch identity directly, and outside callers read ListRevocations.
    request = auth.WatchRevocationsRequest()
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stub = auth_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.WatchRevocations(request, timeout=CALL_TIMEOUT):
                pass
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "ListRevocations" in (refused.value.details() or "")
        listed = await stub.ListRevocations(auth.ListRevocationsRequest(), timeout=CALL_TIMEOUT)
        assert listed.next_page_token == ""
    async with grpc.aio.insecure_channel(mesh.address("identity")) as channel:
        call = auth_grpc.AuthServiceStub(channel).WatchRevocations(request, timeout=CALL_TIMEOUT)
        first = await call.read()
        assert first.HasField("resume_time")
        call.cancel()
