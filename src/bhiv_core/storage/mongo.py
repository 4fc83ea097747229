"""The MongoDB client for deployments, on PyMongo's async API (``AsyncMongoClient``).

Motor is deprecated by MongoDB; PyMongo's own async client is its successor. Stores take a
:class:`MongoDatabase` and keep one collection per resource. Multi-document changes use
transactions, which need a replica set (a single-node one is enough).
"""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

__all__ = ["MongoDatabase", "is_mongo_url"]


def is_mongo_url(url: str) -> bool:
    """True for ``mongodb://`` and ``mongodb+srv://`` URLs."""
    return url.startswith(("mongodb://", "mongodb+srv://"))


class MongoDatabase:
    """One MongoDB database of one service.

    Args:
        url: The connection URL (``mongodb://host:27017/?replicaSet=rs0``).
        name: The database name (``bhiv_identity``).
        timeout_ms: Server selection and connect timeout.
    """

    def __init__(self, url: str, name: str, *, timeout_ms: int = 5000):
        self.url = url
        self.name = name
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, tz_aware=True
        )
        self.db: AsyncDatabase[dict[str, Any]] = self.client[name]

    async def ping(self) -> None:
        """Health check: the server answers ``ping``."""
        await self.client.admin.command("ping")

    async def close(self) -> None:
        """Closes the client."""
        await self.client.close()
