"""One real mesh — seven services and a real Envoy on free loopback ports — for the e2e tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bhiv_core.mesh import Mesh


@pytest.fixture(scope="session")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("mesh"))
    async with started:
        yield started
