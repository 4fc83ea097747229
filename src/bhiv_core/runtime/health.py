"""The gRPC health service every process serves: ``Check``, ``Watch`` and ``List``.

grpcio-health-checking's asyncio servicer (1.85) implements ``Check`` and ``Watch`` but inherits
``List`` from the generated base, which raises ``NotImplementedError``. :class:`HealthServicer` adds
``List`` with the semantics of ``grpc/health/v1/health.proto``: a non-atomic snapshot of every
name the server has a status for, the overall server (``""``) included, as grpc-go reports it.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer as _AsyncHealthServicer

__all__ = ["HealthServicer"]


class HealthServicer(_AsyncHealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """grpcio's asyncio health servicer, with ``List``.

    The names are the server's own few (``""`` and its services), fixed when it starts, so the
    proto's optional RESOURCE_EXHAUSTED answer for "too many services" never applies.
    """

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        """Returns the status of every name this server reports, ``""`` (the whole server) included."""
        statuses = dict(self._server_status)  # a snapshot: a check may set a status meanwhile
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()
            }
        )
