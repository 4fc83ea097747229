"""Calls BHIV Core from another service with the typed stubs of ``bhiv-core-contracts``.

Logs in, calls an RPC with the access token, and reads the ``google.rpc`` details of an error.
Usage: ``BHIV_PASSWORD=... python examples/client.py localhost:8080 admin``.
"""

from __future__ import annotations

import asyncio
import os
import sys

import grpc
from google.rpc import error_details_pb2, status_pb2

from bhiv.identity.v1 import auth_service_pb2, auth_service_pb2_grpc, user_service_pb2, user_service_pb2_grpc

DETAILS_TRAILER = "grpc-status-details-bin"
TIMEOUT = 10.0  # seconds: every call gets a deadline


async def error_status(call: grpc.aio.Call) -> status_pb2.Status:
    """Returns the ``google.rpc.Status`` that a failed call carries in its details trailer."""
    trailers = await call.trailing_metadata()
    raw = trailers.get(DETAILS_TRAILER, b"")
    return status_pb2.Status.FromString(raw) if isinstance(raw, bytes) else status_pb2.Status()


async def main(target: str, username: str, password: str) -> None:
    """Logs in, lists users with the bearer token, then prints the details of a refused call."""
    async with grpc.aio.insecure_channel(target) as channel:
        credentials = auth_service_pb2.LoginRequest(username=username, password=password)
        login = await auth_service_pb2_grpc.AuthServiceStub(channel).Login(credentials, timeout=TIMEOUT)
        bearer = (("authorization", f"Bearer {login.tokens.access_token}"),)
        users = user_service_pb2_grpc.UserServiceStub(channel)
        page = user_service_pb2.ListUsersRequest(page_size=10)
        reply = await users.ListUsers(page, metadata=bearer, timeout=TIMEOUT)
        print("users:", ", ".join(user.username for user in reply.users))

        bad_page = user_service_pb2.ListUsersRequest(page_size=-1)
        call = users.ListUsers(bad_page, metadata=bearer, timeout=TIMEOUT)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            print("error:", error.code().name, error.details())
            for detail in (await error_status(call)).details:
                info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
                if detail.Unpack(info):
                    print("  reason:", info.reason, "domain:", info.domain)
                elif detail.Unpack(bad_request):
                    for violation in bad_request.field_violations:
                        print("  field:", violation.field, "-", violation.description)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], os.environ["BHIV_PASSWORD"]))
