"""Typed errors that handlers raise.

:class:`~bhiv_core.interceptors.errors.ErrorMappingInterceptor` turns them into a
``google.rpc.Status`` with an ``ErrorInfo`` and, where it applies, ``BadRequest`` field
violations or a ``QuotaFailure``.

Servicers never call ``context.abort``: they raise one of these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

__all__ = [
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
]


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
    """The request is malformed; carries the violated fields."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str | None = None,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
    ):
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        if message is None:
            message = "; ".join(f"{v.field}: {v.description}" for v in self.violations) or "invalid request"
        super().__init__(message, reason=reason)


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
