"""Maps typed exceptions to ``google.rpc.Status`` (AIP-193).

Every :class:`~bhiv_core.runtime.errors.BhivError` becomes its status code, its message, and a
``grpc-status-details-bin`` trailer holding an ``ErrorInfo`` (reason, this service's domain,
metadata), plus ``BadRequest`` field violations or a ``QuotaFailure`` where they apply. A
``NotImplementedError`` (what a generated servicer base, or a stub written ahead of its RPC, raises)
is UNIMPLEMENTED, as gRPC defines it. Anything else is a bug: it is logged with its traceback and
answered INTERNAL with no detail.
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
from bhiv_core.runtime.errors import BhivError, Internal, InvalidArgument, ResourceExhausted, Unimplemented

__all__ = ["ErrorMappingInterceptor", "status_proto"]

log = logging.getLogger(__name__)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_proto(error: BhivError, domain: str) -> status_pb2.Status:
    """Builds the ``google.rpc.Status`` for ``error``, with its details."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    details = [_pack(info)]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description, reason=v.reason
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, ResourceExhausted) and error.quota_violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
                        for v in error.quota_violations
                    ]
                )
            )
        )
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=details)


class ErrorMappingInterceptor(Interceptor):
    """Turns raised errors into rich gRPC statuses and records the outcome on the call.

    Args:
        domain: The ``ErrorInfo.domain`` of this service, like ``crm.bhiv.core``.

    """

    def __init__(self, domain: str):
        self._domain = domain

    async def _abort(self, call: CallInfo, context: Context, error: BhivError) -> NoReturn:
        call.code = error.code
        call.message = error.message
        status = status_proto(error, self._domain)
        await context.abort(
            error.code,
            error.message,
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
