"""Credentials for the fuzz suite: a user and token per role, and tokens no service may accept.

Forgeries whose only fault is a claim or a header field (expired, not yet valid, another audience
or issuer, another type, no ``jti``, an unknown ``kid``) are signed with the mesh's real current
key, read the way identity reads it (the encrypted key in ``identity.db``, decrypted with the
key-encryption key beside it): the signature is good, so only the claim checks stand between them
and a service. The revoked token is a real one whose owner logged out, and the suite waits until
every service refuses it before fuzzing.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.mesh import Mesh
from bhiv_core.services.identity.keys import decrypt_private_key, raw_public_key
from tests.e2e.client import CALL_TIMEOUT, ROLE_ENUM, admin_credentials
from tests.fuzz.calls import Metadata
from tests.fuzz.strategies import FORGERIES, ROLES, Credential

TOKEN_REFRESH_SECONDS = 600.0
"""A role's token is replaced after this long, well before its 15 minutes are up."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def current_signing_key(mesh: Mesh) -> tuple[str, Ed25519PrivateKey]:
    """The key identity signs with now, and its ``kid``."""
    with sqlite3.connect(f"file:{mesh.data_dir / 'identity.db'}?mode=ro", uri=True) as conn:
        kid, pem = conn.execute(
            "SELECT kid, private_key_pem FROM signing_keys WHERE retire_time IS NULL"
        ).fetchone()
    return kid, decrypt_private_key(pem, (mesh.data_dir / "identity-kek").read_bytes())


class Credentials:
    """A user per role on ``mesh`` (the generated admin and one new user of every other role).

    Args:
        mesh: The running mesh.
    """

    def __init__(self, mesh: Mesh):
        self._channel = grpc.insecure_channel(mesh.edge_address)
        self._auth = auth_grpc.AuthServiceStub(self._channel)
        self._accounts = {"admin": admin_credentials(mesh)}
        self._tokens: dict[str, tuple[str, float]] = {}
        admin = self.token("admin")
        users = us_grpc.UserServiceStub(self._channel)
        for role in ROLES[1:]:
            username, password = f"fuzz-{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
            user = user_pb2.User(
                username=username,
                role=ROLE_ENUM[role],
                customer="customers/fuzz" if role == "customer" else "",
            )
            users.CreateUser(
                us.CreateUserRequest(user=user, password=password),
                metadata=(("authorization", f"Bearer {admin}"),),
                timeout=CALL_TIMEOUT,
            )
            self._accounts[role] = (username, password)
        self.forged = self._forge(mesh)

    def close(self) -> None:
        self._channel.close()

    def login(self, role: str) -> auth.LoginResponse:
        """A new session of the role's user."""
        username, password = self._accounts[role]
        reply: auth.LoginResponse = self._auth.Login(
            auth.LoginRequest(username=username, password=password), timeout=CALL_TIMEOUT
        )
        return reply

    def token(self, role: str) -> str:
        """The role's access token, renewed before it expires."""
        token, issued = self._tokens.get(role, ("", 0.0))
        if time.monotonic() - issued > TOKEN_REFRESH_SECONDS or not token:
            token = self.login(role).tokens.access_token
            self._tokens[role] = (token, time.monotonic())
        return token

    def _forge(self, mesh: Mesh) -> dict[str, str]:
        kid, key = current_signing_key(mesh)
        real = self.token("sales")
        claims = _claims(real)
        now = int(time.time())

        def signed(headers: dict[str, Any] | None = None, **changes: Any) -> str:
            body = {
                k: v for k, v in {**claims, "jti": secrets.token_hex(16), **changes}.items() if v is not None
            }
            return jwt.encode(
                body, key, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": kid, **(headers or {})}
            )

        header, payload, signature = real.split(".")
        escalated = _b64(json.dumps({**claims, "role": "admin"}).encode())
        # Changing a middle character of the signature changes its bytes (the last one may only
        # change unused bits).
        middle = len(signature) // 2
        other_char = "A" if signature[middle] != "A" else "B"
        forged = {
            "garbage": "abc.def.ghi",
            "empty": "",
            "alg-none": f"{_b64(json.dumps({'alg': 'none', 'typ': 'at+jwt', 'kid': kid}).encode())}."
            f"{escalated}.",
            "hs256-with-public-key": jwt.encode(
                {**claims, "role": "admin"},
                raw_public_key(key.public_key()),
                algorithm="HS256",
                headers={"typ": "at+jwt", "kid": kid},
            ),
            "tampered-claims": f"{header}.{escalated}.{signature}",
            "bad-signature": f"{header}.{payload}.{signature[:middle]}{other_char}{signature[middle + 1 :]}",
            "expired": signed(iat=now - 7200, nbf=now - 7200, exp=now - 3600),
            "not-yet-valid": signed(iat=now + 3600, nbf=now + 3600, exp=now + 7200),
            "wrong-audience": signed(aud="someone-else"),
            "wrong-issuer": signed(iss="someone-else"),
            "unknown-kid": signed(headers={"kid": "no-such-key"}),
            "wrong-type": signed(headers={"typ": "JWT"}),
            "missing-jti": signed(jti=None),
            "foreign-key": jwt.encode(
                {**claims, "role": "admin"},
                Ed25519PrivateKey.generate(),
                algorithm="EdDSA",
                headers={"typ": "at+jwt", "kid": kid},
            ),
            "revoked": self._revoked(),
        }
        assert set(forged) == set(FORGERIES)
        return forged

    def _revoked(self) -> str:
        session = self.login("support")
        token = session.tokens.access_token
        self._auth.Logout(
            auth.LogoutRequest(refresh_token=session.tokens.refresh_token),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=CALL_TIMEOUT,
        )
        return token

    def metadata(self, credential: Credential, *, spend: bool = False) -> Metadata:
        """The ``authorization`` headers of ``credential``.

        Args:
            credential: What to present.
            spend: The call spends its token (``Logout``): a role's token is then a new session's,
                so the role's own token stays valid for the rest of the run.

        """
        if credential.kind == "none":
            return ()
        if credential.kind == "forged":
            return (("authorization", f"Bearer {self.forged[credential.name]}"),)
        token = self.login(credential.name).tokens.access_token if spend else self.token(credential.name)
        if credential.kind == "valid":
            return (("authorization", f"Bearer {token}"),)
        forged = f"Bearer {self.forged['bad-signature']}"
        return {
            "lowercase-scheme": (("authorization", f"bearer {token}"),),
            "no-scheme": (("authorization", token),),
            "double-space": (("authorization", f"Bearer  {token}"),),
            "trailing-space": (("authorization", f"Bearer {token} "),),
            "twice": (("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")),
            "forged-then-valid": (("authorization", forged), ("authorization", f"Bearer {token}")),
            "valid-then-forged": (("authorization", f"Bearer {token}"), ("authorization", forged)),
            "basic-scheme": (("authorization", f"Basic {_b64(b'admin:admin')}"),),
        }[credential.form]


@contextmanager
def credentials_for(mesh: Mesh) -> Iterator[Credentials]:
    """:class:`Credentials` for ``mesh``, closed afterwards."""
    made = Credentials(mesh)
    try:
        yield made
    finally:
        made.close()
