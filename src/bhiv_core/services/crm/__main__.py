"""Runs the crm service: ``python -m bhiv_core.services.crm``."""

from bhiv_core.services.crm.server import serve

serve()
