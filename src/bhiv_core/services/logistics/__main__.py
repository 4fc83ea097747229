"""Runs the logistics service: ``python -m bhiv_core.services.logistics``."""

from bhiv_core.services.logistics.server import serve

serve()
