"""A served llm behind the real error mapper, RBAC and validation, and a fake Groq on loopback.

:class:`FakeGroq` is a small OpenAI-compatible HTTP/1.1 server (asyncio streams, no framework)
that the real ``groq`` SDK talks to through ``BHIV_LLM_GROQ_BASE_URL``; each request takes the next
behaviour of its script (``ok``, ``429``, ``500``, ``slow``, ``malformed``, ``garbage``) and ``ok``
answers a streamed request with server-sent events: the next of ``replies`` when there is one
(each a list of pieces), else :data:`REPLY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bhiv.llm.v1 import completion_service_pb2_grpc as cs_grpc
from bhiv.llm.v1 import conversation_service_pb2_grpc as vs_grpc
from bhiv.llm.v1 import model_service_pb2_grpc as ms_grpc
from bhiv.llm.v1 import usage_service_pb2_grpc as us_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime.chain import chain_order
from bhiv_core.services.llm.server import definition
from tests.harness import config_for, serving
from tests.services.crm.conftest import AsCaller, as_

ADMIN = as_("admin")
CUSTOMER = as_("customer", subject="users/cus-1", customer="customers/c1")
REPLY = ["Groq ", "says ", "hi."]
SCRIPT_REPLY = ["Fine. ", "<scr", "ipt>alert(1)</script>"]


def chain(*_: Any) -> Any:
    return chain_order(
        errors=ErrorMappingInterceptor("llm.bhiv.core"),
        auth=AsCaller(),
        rbac=RbacInterceptor(RolePolicy()),
        validation=ValidationInterceptor(),
    )


@dataclass
class FakeGroq:
    """An OpenAI-compatible chat completions server on loopback, answering from a script."""

    script: list[str] = field(default_factory=list)
    replies: list[list[str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))) or b"{}")
            self.requests.append(body)
            self.headers.append(headers)
            behaviour = self.script.pop(0) if self.script else "ok"
            await self._answer(behaviour, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, behaviour: str, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        if behaviour == "slow":
            await asyncio.sleep(5)
            return
        if behaviour in ("429", "500"):
            error = json.dumps({"error": {"message": "try later", "type": "rate_limit"}}).encode()
            status = "429 Too Many Requests" if behaviour == "429" else "500 Internal Server Error"
            self._send(writer, status, error, {"retry-after-ms": "1"})
            return
        if behaviour == "malformed":
            self._send(writer, "200 OK", json.dumps({"id": "x", "unexpected": True}).encode())
            return
        if behaviour == "garbage":
            self._send(writer, "200 OK", b"<html>not json")
            return
        pieces = SCRIPT_REPLY if behaviour == "script" else (self.replies.pop(0) if self.replies else REPLY)
        if body.get("stream"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if last else None}
                    ],
                }
                if last:
                    chunk["x_groq"] = {
                        "id": "c1",
                        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                    }
                writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await writer.drain()
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
            return
        reply = {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 500_000, "total_tokens": 1_500_000},
        }
        self._send(writer, "200 OK", json.dumps(reply).encode())

    @staticmethod
    def _send(
        writer: asyncio.StreamWriter, status: str, payload: bytes, extra: dict[str, str] | None = None
    ) -> None:
        headers = {
            "content-type": "application/json",
            "content-length": str(len(payload)),
            "connection": "close",
        }
        headers |= extra or {}
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode() + payload)


@pytest.fixture
async def fake_groq() -> AsyncIterator[FakeGroq]:
    fake = FakeGroq()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


@dataclass
class Llm:
    """Stubs to a served llm."""

    completions: cs_grpc.CompletionServiceAsyncStub
    models: ms_grpc.ModelServiceAsyncStub
    channel: Any

    @property
    def usage(self) -> us_grpc.UsageServiceAsyncStub:
        return us_grpc.UsageServiceStub(self.channel)

    @property
    def conversations(self) -> vs_grpc.ConversationServiceAsyncStub:
        return vs_grpc.ConversationServiceStub(self.channel)


@contextlib.asynccontextmanager
async def serve_llm(data_dir: Path, *, groq: FakeGroq | None = None, **env: str) -> AsyncIterator[Llm]:
    """Starts llm on ``data_dir``; with ``groq``, keyed to the fake Groq (a key file, never the env)."""
    if groq is not None:
        key = data_dir / "groq.key"
        key.write_text("gsk_test_not_a_real_key\n")
        key.chmod(0o600)
        env = {
            "LLM_GROQ_API_KEY_FILE": str(key),
            "LLM_GROQ_BASE_URL": groq.url,
            "LLM_GROQ_TIMEOUT_SECONDS": "0.5",
            "LLM_GROQ_MAX_RETRIES": "1",
        } | env
    config = config_for("llm", DATA_DIR=str(data_dir), **env)
    built = definition(config, environ={})
    for hook in built.on_start:
        await hook()
    try:
        async with serving(built.servicers, chain=chain, config=config, checks=dict(built.checks)) as (
            _,
            channel,
        ):
            yield Llm(cs_grpc.CompletionServiceStub(channel), ms_grpc.ModelServiceStub(channel), channel)
    finally:
        for hook in built.on_stop:
            await hook()


@pytest.fixture
async def offline(tmp_path: Path) -> AsyncIterator[Llm]:
    async with serve_llm(tmp_path) as served:
        yield served


@pytest.fixture
async def keyed(tmp_path: Path, fake_groq: FakeGroq) -> AsyncIterator[Llm]:
    async with serve_llm(tmp_path, groq=fake_groq) as served:
        yield served
