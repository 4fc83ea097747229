"""The CRM dashboard (``bhiv.crm.v1.DashboardService``), computed by the store.

Every figure is a count or a sum the store computes (``ResourceStore.aggregate`` and ``count``:
SQL ``GROUP BY`` on SQLite, an aggregation pipeline on MongoDB) over the indexed fields, so a
dashboard costs a handful of queries whatever the number of records, and no record is loaded
into Python. Amounts are summed exactly in two integer parts
(:func:`~bhiv_core.resources.sum_parts`); a total beyond what ``Money`` holds (int64 micros) is
reported as the largest amount it holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from bhiv.crm.v1 import customer_pb2, dashboard_service_pb2, lead_pb2, money_pb2, ticket_pb2
from bhiv_core.resources import Cmp, Group, In, ResourceStore, total_of_parts
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.crm.leads import OPEN_STAGES
from bhiv_core.services.crm.resources import CUSTOMERS, INTERACTIONS, LEADS, TICKETS
from bhiv_core.services.crm.tickets import UNRESOLVED

__all__ = ["RECENT_SECONDS", "Dashboard"]

RECENT_SECONDS = 30 * 86400.0
"""The window of the "last 30 days" figures."""

_INT64_MAX = 2**63 - 1


def _counts(groups: Sequence[Group]) -> dict[object, int]:
    return {group.key: group.count for group in groups}


def _money(currency: str, micros: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_micros=min(micros, _INT64_MAX))


class Dashboard:
    """The dashboard RPC over the CRM store.

    Args:
        store: The CRM store.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    async def get(
        self, request: dashboard_service_pb2.GetDashboardRequest, principal: Principal
    ) -> dashboard_service_pb2.GetDashboardResponse:
        """Every figure of the dashboard, as of now."""
        now = self._clock()
        since = now - RECENT_SECONDS
        store = self._store
        customers = _counts(await store.aggregate(CUSTOMERS, [], group_by="status"))
        leads = _counts(await store.aggregate(LEADS, [], group_by="status"))
        pipeline = await store.aggregate(
            LEADS,
            [In("status", tuple(int(s) for s in OPEN_STAGES))],
            group_by="currency",
            sums=("value_high", "value_low", "weighted_high", "weighted_low"),
        )
        open_tickets = _counts(
            await store.aggregate(
                TICKETS, [In("status", tuple(int(s) for s in UNRESOLVED))], group_by="priority"
            )
        )
        resolved = await store.count(TICKETS, [Cmp("resolved", ">=", since), Cmp("resolved", "<=", now)])
        interactions = await store.count(INTERACTIONS, [Cmp("occur", ">=", since), Cmp("occur", "<=", now)])

        response = dashboard_service_pb2.GetDashboardResponse(
            tickets_resolved_last_30_days=resolved,
            interactions_last_30_days=interactions,
            compute_time=to_timestamp(now),
        )
        # One entry per value in enum order, zero counts included; UNSPECIFIED (0) is never stored.
        for status in sorted(v for v in customer_pb2.CustomerStatus.values() if v):
            response.customers_by_status.add(status=status, count=customers.get(status, 0))
        for stage in sorted(v for v in lead_pb2.LeadStatus.values() if v):
            response.leads_by_status.add(status=stage, count=leads.get(stage, 0))
        for priority in sorted(v for v in ticket_pb2.TicketPriority.values() if v):
            response.open_tickets_by_priority.add(priority=priority, count=open_tickets.get(priority, 0))
        for group in pipeline:
            currency = str(group.key or "")
            if not currency:  # leads without an estimated value
                continue
            value_high, value_low, weighted_high, weighted_low = (int(v) for v in group.sums)
            response.pipeline_values.append(_money(currency, total_of_parts(value_high, value_low)))
            # value x probability, summed exactly, then / 100 rounded down, as the contract says
            weighted = total_of_parts(weighted_high, weighted_low) // 100
            response.weighted_pipeline_values.append(_money(currency, weighted))
        won = leads.get(lead_pb2.LEAD_STATUS_WON, 0)
        lost = leads.get(lead_pb2.LEAD_STATUS_LOST, 0)
        response.win_rate = won / (won + lost) if won + lost else 0.0
        return response
