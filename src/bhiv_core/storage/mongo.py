"""The MongoDB client for deployments, on PyMongo's async API (``AsyncMongoClient``).

Motor is deprecated by MongoDB; PyMongo's own async client is its successor. Stores take a
:class:`MongoDatabase` and keep one collection per resource. Multi-document changes use
transactions, which need a replica set (a single-node one is enough).
"""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from bhiv_core.runtime.config import ConfigError, Settings

__all__ = ["MongoDatabase", "is_mongo_url", "mongo_url_setting"]


def is_mongo_url(url: str) -> bool:
    """True for ``mongodb://`` and ``mongodb+srv://`` URLs."""
    return url.startswith(("mongodb://", "mongodb+srv://"))


def mongo_url_setting(settings: Settings, name: str, embedded: str) -> str | None:
    """The MongoDB URL a store setting selects, or None when it is unset (the embedded store).

    Args:
        settings: Where to read ``BHIV_<name>``.
        name: The setting without its prefix, like ``AUDIT_STORE_URL``.
        embedded: What leaving it unset selects, for the error message.

    Raises:
        ConfigError: The setting is not a ``mongodb://`` or ``mongodb+srv://`` URL.

    """
    url = settings.raw(name)
    if url is not None and not is_mongo_url(url):
        raise ConfigError(
            f"BHIV_{name} must be a mongodb:// or mongodb+srv:// URL (leave it unset for {embedded})"
        )
    return url


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
