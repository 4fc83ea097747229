"""The crm service: customers, leads, support tickets, interactions and the dashboard (``bhiv.crm.v1``)."""

__all__: list[str] = []
