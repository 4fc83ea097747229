"""Maps typed exceptions to ``google.rpc.Status`` (AIP-193).

Every :class:`~bhiv_core.runtime.errors.BhivError` becomes its status code, its message, and a
``grpc-status-details-bin`` trailer holding an ``ErrorInfo`` (reason, this service's domain,
metadata), plus ``BadRequest`` field violations or a ``QuotaFailure`` where they apply. A
``NotImplementedError`` (what a generated servicer base, or a stub written ahead of its RPC, raises)
is UNIMPLEMENTED, as gRPC defines it. Anything else is a bug: it is logged with its traceback and
answered INTERNAL with no detail.

Every error is bounded here, whoever raised it, since errors echo input (a bad path, a value): at
most :data:`~bhiv_core.runtime.errors.MAX_VIOLATIONS` violations are listed (the ``ErrorInfo``
metadata ``omitted_violations`` counts the rest), each text is clipped to
:data:`~bhiv_core.runtime.errors.MAX_TEXT_BYTES`, the message to
:data:`~bhiv_core.runtime.errors.MAX_MESSAGE_BYTES`, and violations are dropped from the end until
the whole status fits :data:`~bhiv_core.runtime.errors.MAX_DETAILS_BYTES`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from bhiv_core.runtime.chain import CallInfo, Context, Interceptor, StreamNext, UnaryNext
from bhiv_core.runtime.errors import (
    MAX_DETAILS_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_VIOLATIONS,
    BhivError,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unimplemented,
    clip,
)

__all__ = ["ErrorMappingInterceptor", "status_proto"]

log = logging.getLogger(__name__)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_proto(error: BhivError, domain: str) -> status_pb2.Status:
    """Builds the bounded ``google.rpc.Status`` for ``error``, with its details.

    Its serialized size is at most :data:`~bhiv_core.runtime.errors.MAX_DETAILS_BYTES`: violations
    beyond what fits are dropped from the end and counted in ``ErrorInfo.metadata``
    (``omitted_violations``).
    """
    field_violations: list[Any] = []
    quota_violations: list[Any] = []
    omitted = 0
    if isinstance(error, InvalidArgument):
        field_violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=clip(v.field), description=clip(v.description), reason=clip(v.reason)
            )
            for v in error.violations[:MAX_VIOLATIONS]
        ]
        omitted = len(error.violations) - len(field_violations) + error.omitted
    if isinstance(error, ResourceExhausted):
        quota_violations = [
            error_details_pb2.QuotaFailure.Violation(subject=clip(v.subject), description=clip(v.description))
            for v in error.quota_violations[:MAX_VIOLATIONS]
        ]
        omitted += len(error.quota_violations) - len(quota_violations)
    metadata = {clip(k): clip(v) for k, v in error.metadata.items()}
    message = clip(error.message, MAX_MESSAGE_BYTES)
    while True:
        status = _status(error, domain, message, metadata, omitted, field_violations, quota_violations)
        if status.ByteSize() <= MAX_DETAILS_BYTES:
            return status
        # Too large: drop the last violation listed (quota failures first: there are few), then
        # the metadata, then half the message, until it fits (the reason and domain are short).
        if quota_violations or field_violations:
            (quota_violations or field_violations).pop()
            omitted += 1
        elif metadata:
            metadata.popitem()
        elif message:
            message = message[: len(message) // 2]
        else:  # pragma: no cover - a reason and a domain alone never fill the budget
            return status


def _status(
    error: BhivError,
    domain: str,
    message: str,
    metadata: dict[str, str],
    omitted: int,
    field_violations: list[Any],
    quota_violations: list[Any],
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=clip(error.reason), domain=domain, metadata=metadata)
    if omitted:
        info.metadata["omitted_violations"] = str(omitted)
    details = [_pack(info)]
    if field_violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=field_violations)))
    if quota_violations:
        details.append(_pack(error_details_pb2.QuotaFailure(violations=quota_violations)))
    return status_pb2.Status(code=error.code.value[0], message=message, details=details)


class ErrorMappingInterceptor(Interceptor):
    """Turns raised errors into rich gRPC statuses and records the outcome on the call.

    Args:
        domain: The ``ErrorInfo.domain`` of this service, like ``crm.bhiv.core``.

    """

    def __init__(self, domain: str):
        self._domain = domain

    async def _abort(self, call: CallInfo, context: Context, error: BhivError) -> NoReturn:
        status = status_proto(error, self._domain)
        call.code = error.code
        call.message = status.message  # bounded, like everything sent
        await context.abort(
            error.code,
            status.message,
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _unexpected(self, call: CallInfo, exc: BaseException) -> BhivError:
        if isinstance(exc, BhivError):
            return exc
        if isinstance(exc, NotImplementedError):
            return Unimplemented(f"{call.method.lstrip('/')} is not implemented")
        log.error("unhandled error in %s", call.method, exc_info=exc)
        return Internal("internal error", reason="INTERNAL")

    def _record_abort(self, call: CallInfo, context: Context) -> None:
        # Someone called context.abort directly (grpc's own services do): keep its code.
        code = context.code()
        call.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN

    async def intercept_unary(
        self, call: CallInfo, request: Any, context: Context, proceed: UnaryNext
    ) -> Any:
        """Runs the rest of the chain and maps any error."""
        try:
            response = await proceed(call, request, context)
        except grpc.aio.AbortError:
            self._record_abort(call, context)
            raise
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await self._abort(call, context, self._unexpected(call, exc))
        call.code = grpc.StatusCode.OK
        return response

    async def intercept_stream(
        self, call: CallInfo, request: Any, context: Context, proceed: StreamNext
    ) -> AsyncIterator[Any]:
        """Streams the rest of the chain and maps any error, also one raised mid-stream."""
        try:
            async for item in proceed(call, request, context):
                yield item
        except grpc.aio.AbortError:
            self._record_abort(call, context)
            raise
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await self._abort(call, context, self._unexpected(call, exc))
        call.code = grpc.StatusCode.OK
