"""Usage metering and monthly budgets per principal, on the resource kit.

Every completion (Complete, StreamComplete; priced or not) is one ``usage_records`` record: the
principal, the time, its input and output tokens and its cost in micro-USD. A principal's budget is
one ``budgets`` record. The month is the calendar month in UTC. A principal is named
``principals/{sub}`` with the ``/`` of the token's subject written ``:`` (``users/abc`` is
``principals/users:abc``), as the contract's name pattern has no ``/``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Final

from bhiv.llm.v1 import usage_pb2
from bhiv.llm.v1 import usage_service_pb2 as us
from bhiv_core.resources import (
    Cmp,
    Collection,
    Eq,
    Field,
    Record,
    ResourceStore,
    Transaction,
    Value,
    new_etag,
    new_id,
)
from bhiv_core.runtime.errors import Aborted, FieldViolation, InvalidArgument, PermissionDenied
from bhiv_core.runtime.times import seconds_of, to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.security.roles import role_allows

__all__ = ["BUDGETS", "USAGE_RECORDS", "Usage", "principal_name"]

USAGE_RECORDS: Final = Collection(
    "usage_records",
    (
        Field("principal", "text"),
        Field("time", "real"),
        Field("input_tokens", "int"),
        Field("output_tokens", "int"),
        Field("cost_micros", "int"),
    ),
    order=("time",),
    indexes=(("principal", "time"),),
)
BUDGETS: Final = Collection("budgets", (Field("principal", "text"),))
BUDGETS_WRITE: Final = "llm.budgets.write"


def principal_name(principal: Principal) -> str:
    """``principals/{sub}`` of a caller, ``/`` in the subject written ``:``."""
    return "principals/" + principal.subject.replace("/", ":")


def month_start(now: float) -> float:
    """The start of ``now``'s calendar month in UTC, in Unix seconds."""
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _may_manage_budgets(principal: Principal) -> bool:
    if principal.scopes is not None:
        return BUDGETS_WRITE in principal.scopes
    return role_allows(principal.role, BUDGETS_WRITE)


class Usage:
    """The usage ledger and budgets.

    Args:
        store: The llm service's resource store.
        default_budget_micros: The monthly budget of a principal with none set.
        clock: Unix seconds now.

    """

    def __init__(
        self, store: ResourceStore, default_budget_micros: int, clock: Callable[[], float] = time.time
    ):
        self._store = store
        self._default = default_budget_micros
        self._clock = clock

    async def record(self, principal: str, input_tokens: int, output_tokens: int, cost_micros: int) -> None:
        """Adds one completion to a principal's ledger."""
        fields: dict[str, Value] = {
            "principal": principal,
            "time": self._clock(),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_micros": cost_micros,
        }

        async def insert(tx: Transaction) -> None:
            await tx.insert(USAGE_RECORDS, Record(id=new_id(), data=b"", fields=fields, etag=new_etag()))

        await self._store.run(insert)

    async def _budget_record(self, principal: str) -> Record | None:
        return await self._store.get(BUDGETS, principal)

    async def _budget(self, principal: str) -> int:
        record = await self._budget_record(principal)
        if record is None:
            return self._default
        return usage_pb2.Budget.FromString(record.data).monthly_budget_micros

    async def _sums(self, principal: str, start: float, end: float) -> tuple[int, int, int, int]:
        """(count, input tokens, output tokens, cost) of a principal in [start, end)."""
        groups = await self._store.aggregate(
            USAGE_RECORDS,
            [Eq("principal", principal), Cmp("time", ">=", start), Cmp("time", "<", end)],
            sums=("input_tokens", "output_tokens", "cost_micros"),
        )
        if not groups:
            return 0, 0, 0, 0
        inputs, outputs, cost = (int(s) for s in groups[0].sums)
        return groups[0].count, inputs, outputs, cost

    async def remaining(self, principal: str) -> tuple[int, int]:
        """(budget, what is left of it this month) of a principal."""
        now = self._clock()
        budget = await self._budget(principal)
        _, _, _, cost = await self._sums(principal, month_start(now), now + 1)
        return budget, max(0, budget - cost)

    async def get_usage(self, request: us.GetUsageRequest, caller: Principal) -> us.GetUsageResponse:
        """A principal's usage over a window; another's needs ``llm.budgets.write``."""
        own = principal_name(caller)
        principal = request.principal or own
        if principal != own and not _may_manage_budgets(caller):
            raise PermissionDenied("reading another principal's usage needs llm.budgets.write")
        now = self._clock()
        start = seconds_of(request.start_time) if request.HasField("start_time") else month_start(now)
        end = seconds_of(request.end_time) if request.HasField("end_time") else now + 1e-6
        if end <= start:
            raise InvalidArgument(
                violations=[FieldViolation("end_time", "must be after start_time", "END_BEFORE_START")]
            )
        count, inputs, outputs, cost = await self._sums(principal, start, end)
        budget, left = await self.remaining(principal)
        return us.GetUsageResponse(
            usage=usage_pb2.UsageSummary(
                principal=principal,
                start_time=to_timestamp(start),
                end_time=to_timestamp(end),
                input_tokens=inputs,
                output_tokens=outputs,
                request_count=count,
                cost_micros=cost,
                budget_micros=budget,
                remaining_micros=left,
                currency_code="USD",
            )
        )

    async def set_budget(self, request: us.SetBudgetRequest) -> us.SetBudgetResponse:
        """Sets a principal's monthly budget; a stale ``etag`` is ABORTED."""
        budget = usage_pb2.Budget(
            principal=request.principal,
            monthly_budget_micros=request.monthly_budget_micros,
            currency_code="USD",
            update_time=to_timestamp(self._clock()),
            etag=new_etag(),
        )
        record = Record(
            id=request.principal,
            data=budget.SerializeToString(),
            fields={"principal": request.principal},
            etag=budget.etag,
        )

        async def write(tx: Transaction) -> None:
            current = await tx.get(BUDGETS, request.principal)
            if request.etag and (current is None or current.etag != request.etag):
                raise Aborted(
                    f"the budget of {request.principal} changed: read it again", reason="STALE_ETAG"
                )
            if current is None:
                await tx.insert(BUDGETS, record)
            elif not await tx.replace(BUDGETS, record, expected_etag=current.etag):
                raise Aborted(
                    f"the budget of {request.principal} changed: read it again", reason="STALE_ETAG"
                )

        await self._store.run(write)
        return us.SetBudgetResponse(budget=budget)
