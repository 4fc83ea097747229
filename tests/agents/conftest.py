"""Fixtures of the agents' tests: the sample corpus indexed once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bhiv_core.knowledge import KnowledgeIndex
from tests.agents.text_tools import corpus_index


@pytest.fixture(scope="session")
async def sample_index(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KnowledgeIndex]:
    """A BM25 index of the sample corpus, shared read-only by the tests of a session."""
    index = await corpus_index(tmp_path_factory.mktemp("knowledge"))
    yield index
    await index.close()
