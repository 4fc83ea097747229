"""The webhook collections of integrations' kit store (filled in by the webhooks work)."""

from __future__ import annotations

from bhiv_core.resources import Collection

__all__ = ["COLLECTIONS"]

COLLECTIONS: tuple[Collection, ...] = ()
