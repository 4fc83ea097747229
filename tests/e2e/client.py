"""Test clients through the edge: log in, call any RPC by path, create users of each role."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import grpc

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.mesh import Mesh

CALL_TIMEOUT = 20.0
"""Seconds any test call may take: a stuck service fails the test instead of hanging it."""

ROLE_ENUM = {
    "admin": user_pb2.ROLE_ADMIN,
    "ops": user_pb2.ROLE_OPS,
    "sales": user_pb2.ROLE_SALES,
    "support": user_pb2.ROLE_SUPPORT,
    "customer": user_pb2.ROLE_CUSTOMER,
}


@dataclass
class Session:
    """A logged-in user."""

    username: str
    password: str
    access_token: str
    refresh_token: str
    user: Any

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access_token}"),)


def admin_credentials(mesh: Mesh) -> tuple[str, str]:
    path = mesh.data_dir / "admin-credentials"
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return values["username"], values["password"]


async def login(mesh: Mesh, username: str, password: str) -> Session:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        reply = await auth_grpc.AuthServiceStub(channel).Login(
            auth.LoginRequest(username=username, password=password), timeout=CALL_TIMEOUT
        )
    return Session(username, password, reply.tokens.access_token, reply.tokens.refresh_token, reply.user)


async def admin_session(mesh: Mesh) -> Session:
    return await login(mesh, *admin_credentials(mesh))


async def create_user(mesh: Mesh, admin: Session, role: str, customer: str = "") -> Session:
    username = f"{role}-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    user = user_pb2.User(username=username, display_name=role, role=ROLE_ENUM[role], customer=customer)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        await us_grpc.UserServiceStub(channel).CreateUser(
            us.CreateUserRequest(user=user, password=password), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    return await login(mesh, username, password)
