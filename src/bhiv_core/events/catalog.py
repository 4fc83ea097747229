"""The platform event types, read from the contracts.

Every message of ``bhiv.integrations.v1`` whose ``(bhiv.options.v1.event)`` option is set is the
payload of one event type (``protos/bhiv/integrations/v1/event.proto``); nothing else lists them,
so a new event type is a new message in the contract. :func:`event_types` is the catalog,
:func:`type_of` the type a payload message publishes as, and :func:`envelope`/:func:`payload_of`
pack and unpack the :class:`~bhiv.integrations.v1.event_pb2.Event` envelope.
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from bhiv.integrations.v1 import event_pb2
from bhiv.options.v1 import annotations_pb2
from bhiv_core.runtime.times import to_timestamp

__all__ = ["EventType", "UnknownEventType", "body_of", "envelope", "event_types", "payload_of", "type_of"]


class UnknownEventType(ValueError):
    """A message that is no event payload, or an envelope whose type or payload does not fit."""


@dataclass(frozen=True, slots=True)
class EventType:
    """One event type.

    Attributes:
        type: ``<domain>.<resource>.<action>``, such as ``crm.ticket.resolved``.
        description: One sentence, from the contract.
        message: The payload message class.

    """

    type: str
    description: str
    message: builtins.type[Message]

    @property
    def payload_message(self) -> str:
        """The payload's full proto name."""
        return str(self.message.DESCRIPTOR.full_name)


@cache
def event_types() -> Mapping[str, EventType]:
    """Every event type of the contracts, by type, in type order."""
    found: dict[str, EventType] = {}
    for descriptor in event_pb2.DESCRIPTOR.message_types_by_name.values():
        options = descriptor.GetOptions()
        if not options.HasExtension(annotations_pb2.event):
            continue
        rule = options.Extensions[annotations_pb2.event]
        if rule.type in found:
            raise RuntimeError(f"two payloads declare the event type {rule.type}")
        found[rule.type] = EventType(rule.type, rule.description, getattr(event_pb2, descriptor.name))
    return dict(sorted(found.items()))


def type_of(payload: Message) -> str:
    """The event type ``payload`` is published as.

    Raises:
        UnknownEventType: The message is no event payload.

    """
    options = payload.DESCRIPTOR.GetOptions()
    if not options.HasExtension(annotations_pb2.event):
        raise UnknownEventType(f"{payload.DESCRIPTOR.full_name} is not an event payload")
    return str(options.Extensions[annotations_pb2.event].type)


def envelope(payload: Message, *, source: str, subject: str, time: float, id: str = "") -> event_pb2.Event:
    """The event of ``payload``: a new id (unless given), its type, packed payload and time."""
    event = event_pb2.Event(
        id=id or uuid.uuid4().hex,
        type=type_of(payload),
        source=source,
        subject=subject,
        time=to_timestamp(time),
    )
    event.payload.Pack(payload)
    return event


def payload_of(event: event_pb2.Event) -> Message:
    """The payload of ``event``, unpacked to its type's message.

    Raises:
        UnknownEventType: The type is unknown or the payload is not the type's message.

    """
    known = event_types().get(event.type)
    if known is None:
        raise UnknownEventType(f"unknown event type {event.type!r}")
    payload: Message = known.message()
    if not event.payload.Unpack(payload):
        raise UnknownEventType(f"the payload of {event.type} must be a {known.payload_message}")
    return payload


def body_of(event: event_pb2.Event) -> bytes:
    """The JSON body a webhook receives for ``event`` (the shape ``Event``'s comment documents)."""
    data: dict[str, Any] = json_format.MessageToDict(
        payload_of(event), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    body = {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "subject": event.subject,
        "time": event.time.ToJsonString(),
        "data": data,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
