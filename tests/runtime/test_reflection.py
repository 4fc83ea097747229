"""Server reflection in both versions: a v1 stub, ``buf curl`` asking v1 only, and v1alpha as before."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bhiv.identity.v1 import user_service_pb2 as us
from bhiv_core.edge.binaries import find_tool
from bhiv_core.runtime.reflection import V1_SERVICE, V1ALPHA_SERVICE, v1_file, v1_messages
from tests.harness import serving

USER_SERVICE = us.DESCRIPTOR.services_by_name["UserService"]
V1_METHOD = f"/{V1_SERVICE}/ServerReflectionInfo"


async def v1_ask(channel: grpc.aio.Channel, **request: Any) -> Any:
    """Sends one v1 reflection request with a v1 stub and returns the one reply."""
    request_cls, response_cls = v1_messages()
    call = channel.stream_stream(
        V1_METHOD,
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )

    async def one() -> AsyncIterator[Any]:
        yield request_cls(**request)

    async for reply in call(one(), timeout=10):
        return reply
    raise AssertionError("no reply")


async def test_v1_reflection_lists_every_service_and_both_reflection_versions() -> None:
    async with serving([(USER_SERVICE, object())]) as (_, channel):
        reply = await v1_ask(channel, list_services="")
    names = {service.name for service in reply.list_services_response.service}
    assert {"bhiv.identity.v1.UserService", "bhiv.crm.v1.CustomerService", "grpc.health.v1.Health"} <= names
    assert {V1_SERVICE, V1ALPHA_SERVICE} <= names


async def test_v1_reflection_describes_a_contract_and_itself() -> None:
    async with serving([(USER_SERVICE, object())]) as (_, channel):
        contract = await v1_ask(channel, file_containing_symbol="bhiv.identity.v1.UserService")
        itself = await v1_ask(channel, file_containing_symbol=V1_SERVICE)
        missing = await v1_ask(channel, file_containing_symbol="bhiv.nothing.v1.Nope")
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in contract.file_descriptor_response.file_descriptor_proto
    ]
    assert "bhiv/identity/v1/user_service.proto" in {f.name for f in files}
    own = descriptor_pb2.FileDescriptorProto.FromString(
        itself.file_descriptor_response.file_descriptor_proto[0]
    )
    assert (own.name, own.package) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    assert not own.options.deprecated
    assert own.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_v1_messages_are_v1alpha_field_for_field() -> None:
    # What lets one servicer answer both versions: the same fields, numbers and types.
    def shape(file: Any) -> dict[str, list[tuple[str, int, int, str]]]:
        return {
            name: [
                (f.name, f.number, f.type, f.message_type.name if f.message_type else "")
                for f in message.fields
            ]
            for name, message in file.message_types_by_name.items()
        }

    assert shape(v1_file()) == shape(reflection_pb2.DESCRIPTOR)


async def test_v1alpha_reflection_still_answers() -> None:
    async with serving([(USER_SERVICE, object())]) as (_, channel):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def one() -> AsyncIterator[Any]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        reply = await stub.ServerReflectionInfo(one(), timeout=10).read()
    assert V1_SERVICE in {service.name for service in reply.list_services_response.service}


async def test_buf_curl_asking_reflection_v1_only_calls_an_rpc() -> None:
    async with serving([(USER_SERVICE, object())]) as (running, _):
        listed = await asyncio.to_thread(
            subprocess.run,
            [
                str(find_tool("buf")),
                "curl",
                "--protocol=grpc",
                "--reflect-protocol=grpc-v1",
                "--list-services",
                f"http://{running.address}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        called = await asyncio.to_thread(
            subprocess.run,
            [
                str(find_tool("buf")),
                "curl",
                "--protocol=grpc",
                "--reflect-protocol=grpc-v1",
                "--data={}",
                f"http://{running.address}/grpc.health.v1.Health/List",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert listed.returncode == 0, listed.stderr
    assert "bhiv.identity.v1.UserService" in listed.stdout.split()
    assert called.returncode == 0, called.stderr
    assert '"bhiv.identity.v1.UserService": {' in called.stdout
