"""The logistics service: inventory, suppliers and shipments with tracking (``bhiv.logistics.v1``)."""

__all__: list[str] = []
