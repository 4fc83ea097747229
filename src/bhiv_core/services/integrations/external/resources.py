"""Integrations on the resource kit, in integrations' kit store.

- **integrations** (``integrations/{id}``): listed by display name (case-folded), then name;
  filtered by ``kind`` and ``enabled``. The stored message is the integration as every read
  returns it (``has_secret`` set, no secret: the message has no field for one). The secret lives
  sealed (:class:`~bhiv_core.storage.sealing.SecretBox`, bound to the integration's name) in the
  store-only ``sealed`` field, empty when the integration holds none, so no read path can return
  it by mistake and a sealed value copied onto another integration does not open.
"""

from __future__ import annotations

import dataclasses

from bhiv.integrations.v1 import integration_pb2
from bhiv_core.resources import Collection, Field, Record, ResourceType, Value, sort_key
from bhiv_core.storage.sealing import SecretBox

__all__ = ["COLLECTIONS", "INTEGRATION", "INTEGRATIONS", "open_secret", "sealed_record"]

INTEGRATIONS = Collection(
    "integrations",
    (Field("sort", "text"), Field("kind", "int"), Field("enabled", "bool"), Field("sealed", "text")),
    order=("sort",),
    indexes=(("kind",), ("enabled",)),
)


def _fields(m: integration_pb2.Integration) -> dict[str, Value]:
    # ``sealed`` is set by sealed_record: the message has no secret to compute it from.
    return {"sort": sort_key(m.display_name), "kind": int(m.kind), "enabled": m.enabled, "sealed": ""}


INTEGRATION: ResourceType[integration_pb2.Integration] = ResourceType(
    message=integration_pb2.Integration,
    collection=INTEGRATIONS,
    index=_fields,
    mutable=frozenset({"display_name", "kind", "base_url", "auth_kind", "api_key_header", "enabled"}),
    label="integration",
    request_field="integration",
)

COLLECTIONS: tuple[Collection, ...] = (INTEGRATIONS,)


def sealed_record(integration: integration_pb2.Integration, secret: str, box: SecretBox) -> Record:
    """The stored form of an integration: its message, and its secret (if any) sealed beside it."""
    record = INTEGRATION.record(integration)
    sealed = box.seal(secret.encode(), integration.name) if secret else ""
    return dataclasses.replace(record, fields={**record.fields, "sealed": sealed})


def open_secret(record: Record, box: SecretBox) -> str:
    """The secret of a stored integration, decrypted; empty when it holds none.

    Raises:
        ValueError: The sealed value does not open with this key (another KEK file, or altered).

    """
    sealed = record.fields.get("sealed", "")
    if not isinstance(sealed, str) or not sealed:
        return ""
    return box.open(sealed, INTEGRATION.name(record.id)).decode()
