"""The transactional outbox: a publishing service writes its events beside the change they report.

:func:`publish` runs inside the kit transaction of the change (``store.run(...)``) and inserts
the event's :class:`~bhiv.integrations.v1.event_pb2.Event` (from
:func:`~bhiv_core.events.catalog.envelope`) into the service's own ``outbox`` collection, so the
event commits with the change or rolls back with it: never an event for a change that did not
happen, never a change whose event is lost. The relay (:mod:`bhiv_core.events.relay`) sends the
outbox to integrations afterwards and deletes what integrations accepted.

**Commit order.** Each event takes the next number of a counter record (``outbox_state``,
id ``sequence``) read and rewritten in the same transaction. Two transactions that publish both
write the counter, so they are serialised (SQLite: ``BEGIN IMMEDIATE`` serialises every writer of
the file, across processes; MongoDB: the second of two concurrent writers of the counter gets a
write conflict and runs again), and the numbers follow the commit order on both stores, which
a time stamp would not (a transaction that read the clock first may commit last). The relay reads
the outbox in number order.

**Schema.** :data:`COLLECTIONS` are the two collections a publishing service adds to its store;
:func:`outbox_migration` is the SQLite script that adds them to a store that already has its
receipts table (append it to the service's migrations).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from google.protobuf.message import Message

from bhiv.integrations.v1 import event_pb2
from bhiv_core.events.catalog import envelope
from bhiv_core.resources import Collection, Field, Record, Transaction
from bhiv_core.resources.sqlite import RECEIPTS, schema

__all__ = [
    "COLLECTIONS",
    "LEASE_ID",
    "OUTBOX",
    "OUTBOX_STATE",
    "SEQUENCE_ID",
    "add_listener",
    "event_of",
    "outbox_migration",
    "publish",
    "remove_listener",
]

OUTBOX = Collection(
    "outbox",
    (Field("seq", "int"), Field("type", "text"), Field("rejected", "bool")),
    order=("seq",),
    unique=(("seq",),),
    indexes=(("rejected",),),
)
"""The events waiting for the relay, in commit order (``seq``), one record per event (id = event id).

``rejected`` marks an event integrations refused on its own as invalid (INVALID_ARGUMENT): it is
kept for an operator but no longer sent, so one bad event cannot hold up the ones behind it.
"""

OUTBOX_STATE = Collection(
    "outbox_state", (Field("value", "int"), Field("holder", "text"), Field("until", "real"))
)
"""Two records: the sequence counter (:data:`SEQUENCE_ID`, ``value`` = the last number given) and
the relay lease (:data:`LEASE_ID`: which relay sends, ``holder``, until when, ``until``)."""

SEQUENCE_ID = "sequence"
"""The id of the counter record in :data:`OUTBOX_STATE`."""

LEASE_ID = "relay"
"""The id of the relay lease record in :data:`OUTBOX_STATE`."""

COLLECTIONS = (OUTBOX, OUTBOX_STATE)
"""What a publishing service adds to its store's collections."""

_listeners: set[Callable[[], None]] = set()
_listeners_lock = threading.Lock()


def outbox_migration() -> str:
    """The SQLite script adding :data:`COLLECTIONS` to a store whose first migration made its receipts."""
    return schema(COLLECTIONS).removesuffix(RECEIPTS).rstrip(";\n")


def add_listener(listener: Callable[[], None]) -> None:
    """Calls ``listener`` whenever this process publishes an event (the relays' wake-up).

    It is called inside the publishing transaction, possibly on the store's writer thread and
    before the commit: it must be thread-safe, quick and never raise (a relay schedules a wake-up
    on its own loop, and reads the outbox in a transaction of its own, which SQLite runs after
    the publishing one).
    """
    with _listeners_lock:
        _listeners.add(listener)


def remove_listener(listener: Callable[[], None]) -> None:
    """Stops calling ``listener``."""
    with _listeners_lock:
        _listeners.discard(listener)


def _notify() -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        with contextlib.suppress(Exception):  # a wake-up that fails is caught up by the relay's poll
            listener()


async def publish(
    txn: Transaction, payload: Message, *, source: str, subject: str, time: float
) -> event_pb2.Event:
    """Writes the event of ``payload`` into the outbox, in the caller's transaction.

    Args:
        txn: The transaction of the change the event reports.
        payload: An event payload message of ``bhiv.integrations.v1`` (its type comes from it).
        source: The publishing service (``crm``).
        subject: The resource the event is about (``tickets/{id}``).
        time: When the change happened (Unix seconds).

    Returns:
        The event as stored (its id is new).

    Raises:
        UnknownEventType: ``payload`` is not an event payload (a programming error, which rolls
            the change back).

    """
    event = envelope(payload, source=source, subject=subject, time=time)
    counter = await txn.get(OUTBOX_STATE, SEQUENCE_ID)
    last = counter.value("value") if counter is not None else 0
    seq = (last if isinstance(last, int) else 0) + 1
    state = Record(id=SEQUENCE_ID, data=b"", fields={"value": seq}, etag=str(seq))
    if counter is None:
        await txn.insert(OUTBOX_STATE, state)
    elif not await txn.replace(OUTBOX_STATE, state, expected_etag=counter.etag):
        # The transaction read the counter and another wrote it since: neither store lets that
        # commit (SQLite serialises writers, MongoDB aborts the later one), so this is a bug.
        raise RuntimeError("the outbox sequence changed inside a transaction")
    await txn.insert(
        OUTBOX,
        Record(
            id=event.id,
            data=event.SerializeToString(deterministic=True),
            fields={"seq": seq, "type": event.type, "rejected": False},
        ),
    )
    _notify()
    return event


def event_of(record: Record) -> event_pb2.Event:
    """The event an outbox record holds."""
    return event_pb2.Event.FromString(record.data)
