"""Typed errors that handlers raise.

:class:`~bhiv_core.interceptors.errors.ErrorMappingInterceptor` turns them into a
``google.rpc.Status`` with an ``ErrorInfo`` and, where it applies, ``BadRequest`` field
violations or a ``QuotaFailure``.

Servicers never call ``context.abort``: they raise one of these.

Errors echo what a caller sent (a field path, a value), so every error is bounded before it leaves:
the mapper lists at most :data:`MAX_VIOLATIONS` violations, clips each text to
:data:`MAX_TEXT_BYTES` (:func:`clip`), the message to :data:`MAX_MESSAGE_BYTES` and the whole
``google.rpc.Status`` to :data:`MAX_DETAILS_BYTES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import grpc

__all__ = [
    "MAX_DETAILS_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_TEXT_BYTES",
    "MAX_VIOLATIONS",
    "Aborted",
    "AlreadyExists",
    "BhivError",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "QuotaViolation",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "clip",
]

MAX_VIOLATIONS: Final = 20
"""The most violations one error lists; the others are only counted (``InvalidArgument.omitted``)."""

MAX_TEXT_BYTES: Final = 256
"""The most UTF-8 bytes of one text in an error's details: a field path, a description, a value."""

MAX_MESSAGE_BYTES: Final = 1024
"""The most UTF-8 bytes of an error's message (``grpc-message``, percent-encoded on the wire)."""

MAX_DETAILS_BYTES: Final = 3072
"""The most bytes of an error's serialized ``google.rpc.Status`` (``grpc-status-details-bin``).

With the message, a trailer stays under 8 KiB on the wire even at worst (a message of multi-byte
characters, percent-encoded, is at most 3 KiB; the details, base64-encoded, 4 KiB): the default
limit of grpc clients on received metadata, and far below the edge's header limits. A larger
trailer is refused by the client, or by Envoy, which then resets the connection of every call on it.
"""

_CLIPPED: Final = "…"


def clip(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """Returns ``text`` cut to at most ``limit`` UTF-8 bytes, ending with ``…`` when it was cut.

    Costs O(limit), not O(len(text)): only the head of a long text is looked at.
    """
    if len(text) <= limit and (text.isascii() or len(text.encode("utf-8", "replace")) <= limit):
        return text
    room = limit - len(_CLIPPED.encode())
    # A cut inside a character drops that character: "ignore" never emits a partial one.
    return text[:room].encode("utf-8", "replace")[:room].decode("utf-8", "ignore") + _CLIPPED


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request.

    Attributes:
        field: The field path, like ``customer.email`` or ``items[2].quantity``.
        description: What is wrong with it, for a person.
        reason: A machine-readable UPPER_SNAKE reason, like ``REQUIRED`` or ``TOO_LONG``.

    """

    field: str
    description: str
    reason: str = "INVALID"


class BhivError(Exception):
    """Base of every error a handler raises on purpose.

    Attributes:
        code: The gRPC status code.
        reason: The UPPER_SNAKE ``ErrorInfo.reason``.
        message: The developer-facing message sent as ``grpc-message``.
        metadata: Extra ``ErrorInfo.metadata`` (string to string).

    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(BhivError):
    """The request is malformed; carries the violated fields.

    Attributes:
        violations: The violations found (the mapper sends at most :data:`MAX_VIOLATIONS`).
        omitted: How many more were found but not kept (a validator stops collecting).

    """

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str | None = None,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
        omitted: int = 0,
    ):
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        self.omitted = omitted
        if message is None:
            message = _summary(self.violations, omitted)
        super().__init__(message, reason=reason)


def _summary(violations: Sequence[FieldViolation], omitted: int) -> str:
    """``field: description; ...`` of the first violations (each clipped), and how many more."""
    listed = violations[:MAX_VIOLATIONS]
    parts = [clip(f"{v.field}: {v.description}") for v in listed]
    more = len(violations) - len(listed) + omitted
    if more:
        parts.append(f"and {more} more")
    return "; ".join(parts) or "invalid request"


class NotFound(BhivError):
    """The named resource does not exist (or the caller may not know it exists)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(BhivError):
    """A resource with the same unique key exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(BhivError):
    """The system is not in a state the call requires (an illegal status transition, say)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(BhivError):
    """A concurrency conflict, such as a stale ``etag``; the client may re-read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(BhivError):
    """The principal is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(BhivError):
    """No valid credential. The message never says which check failed."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted quota: its subject and a description."""

    subject: str
    description: str


class ResourceExhausted(BhivError):
    """A limit or budget is used up; carries ``QuotaFailure`` violations."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[QuotaViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ):
        super().__init__(message, reason=reason, metadata=metadata)
        self.quota_violations: tuple[QuotaViolation, ...] = tuple(violations)


class OutOfRange(BhivError):
    """An argument is valid but beyond what exists (a sequence after the latest record)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class Unimplemented(BhivError):
    """The RPC is in the contract but not built yet; the message says what is missing."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"


class Unavailable(BhivError):
    """A dependency is down; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Internal(BhivError):
    """An invariant broke. Never used for bad input."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"
