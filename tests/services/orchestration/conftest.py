"""A served orchestration behind the real error mapper, RBAC and validation.

The principal of each call comes from ``x-test-*`` headers (the crm tests' stand-in for auth);
RBAC reads the real role matrix from the contracts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bhiv.orchestration.v1 import knowledge_service_pb2_grpc as ks_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime.chain import chain_order
from bhiv_core.services.orchestration.server import definition
from tests.harness import config_for, serving
from tests.services.crm.conftest import AsCaller


def chain(*_: Any) -> Any:
    return chain_order(
        errors=ErrorMappingInterceptor("orchestration.bhiv.core"),
        auth=AsCaller(),
        rbac=RbacInterceptor(RolePolicy()),
        validation=ValidationInterceptor(),
    )


@dataclass
class Orchestration:
    """A served orchestration and a stub to its knowledge service."""

    channel: grpc.aio.Channel
    data_dir: Path

    @property
    def knowledge(self) -> ks_grpc.KnowledgeServiceAsyncStub:
        return ks_grpc.KnowledgeServiceStub(self.channel)


@contextlib.asynccontextmanager
async def serve_orchestration(data_dir: Path, **env: str) -> AsyncIterator[Orchestration]:
    """Starts orchestration on ``data_dir`` (its store and index opened by the definition's hooks)."""
    config = config_for("orchestration", DATA_DIR=str(data_dir), **env)
    built = definition(config)
    for hook in built.on_start:
        await hook()
    try:
        async with serving(built.servicers, chain=chain, config=config, checks=dict(built.checks)) as (
            _,
            channel,
        ):
            yield Orchestration(channel, data_dir)
    finally:
        for hook in built.on_stop:
            await hook()


@pytest.fixture
async def orchestration(tmp_path: Path) -> AsyncIterator[Orchestration]:
    """An orchestration with an empty knowledge base (no sample corpus)."""
    async with serve_orchestration(tmp_path, KNOWLEDGE_SAMPLE_CORPUS="off") as served:
        yield served
