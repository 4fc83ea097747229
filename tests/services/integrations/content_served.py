"""ContentService served by integrations' real definition, with llm (real, maybe keyed to a fake Groq).

Both services run behind the real tracing, error, RBAC and validation interceptors. Integrations'
auth stand-in is the header one (the caller's role and subject; its principal carries the token
``token-of-users-<name>``, as the real auth keeps the caller's JWT); llm's stand-in accepts exactly
that token and records every call's metadata, so a test sees what integrations forwarded. With a
:class:`~tests.services.llm.conftest.FakeGroq`, llm uses the real ``groq`` SDK over HTTP to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from bhiv.integrations.v1 import content_service_pb2 as cs
from bhiv.integrations.v1 import content_service_pb2_grpc as cs_grpc
from bhiv_core.mesh import free_port
from bhiv_core.runtime.server import start_service
from bhiv_core.security.principal import Principal
from bhiv_core.services.integrations import server as integrations_server
from bhiv_core.services.llm import server as llm_server
from tests.harness import config_for
from tests.services.llm.conftest import FakeGroq
from tests.services.logistics.conftest import HeaderAuth, role
from tests.services.orchestration.test_agents_llm import BearerAuth, _chain

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SALLY = role("sales", subject="users/sally", traceparent=f"00-{TRACE_ID}-b7ad6b7169203331-01")
SALLY_TOKEN = "token-of-users-sally"  # what HeaderAuth gives users/sally
SUPPORT = role("support")


@dataclass
class Content:
    """A served integrations' ContentService and what its llm saw."""

    service: cs_grpc.ContentServiceAsyncStub
    llm_auth: BearerAuth

    async def generate(
        self, caller: tuple[tuple[str, str], ...] = SALLY, **fields: object
    ) -> cs.GenerateSocialContentResponse:
        """GenerateSocialContent as ``caller``."""
        request = cs.GenerateSocialContentRequest(**fields)  # type: ignore[arg-type]
        return await self.service.GenerateSocialContent(request, metadata=caller)


def groq_env(directory: Path, groq: FakeGroq) -> dict[str, str]:
    """Llm's settings keying it to ``groq`` (a key file, never the environment)."""
    key = directory / "groq.key"
    key.write_text("gsk_test_not_a_real_key\n")
    key.chmod(0o600)
    return {
        "LLM_GROQ_API_KEY_FILE": str(key),
        "LLM_GROQ_BASE_URL": groq.url,
        "LLM_GROQ_TIMEOUT_SECONDS": "2",
        "LLM_GROQ_MAX_RETRIES": "0",
    }


@contextlib.asynccontextmanager
async def serve_content(
    tmp_path: Path,
    *,
    mode: str = "auto",
    groq: FakeGroq | None = None,
    llm_down: bool = False,
    llm_env: dict[str, str] | None = None,
) -> AsyncIterator[Content]:
    """Llm (keyed to ``groq`` when given; not started when ``llm_down``) and integrations pointing at it.

    With ``llm_down``, integrations' ``BHIV_LLM_ADDR`` is a loopback port where nothing listens.
    """
    (tmp_path / "llm").mkdir(parents=True)
    (tmp_path / "integrations").mkdir(parents=True)
    env = dict(llm_env or {}) | (groq_env(tmp_path / "llm", groq) if groq is not None else {})
    auth = BearerAuth({SALLY_TOKEN: Principal("users/sally", "sales", token=SALLY_TOKEN)})
    llm = None
    if not llm_down:
        llm_config = config_for("llm", DATA_DIR=str(tmp_path / "llm"), **env)
        llm = await start_service(
            llm_config, llm_server.definition(llm_config, environ={}), _chain("llm.bhiv.core", auth)
        )
    config = config_for(
        "integrations",
        DATA_DIR=str(tmp_path / "integrations"),
        LLM_ADDR=llm.address if llm is not None else f"127.0.0.1:{free_port()}",
        CONTENT_LLM=mode,
    )
    integrations = await start_service(
        config, integrations_server.definition(config), _chain("integrations.bhiv.core", HeaderAuth())
    )
    channel = grpc.aio.insecure_channel(integrations.address)
    try:
        yield Content(cs_grpc.ContentServiceStub(channel), auth)
    finally:
        await channel.close()
        await integrations.stop(grace=0.5)
        if llm is not None:
            await llm.stop(grace=0.5)
