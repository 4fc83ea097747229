"""Runs the integrations service: ``python -m bhiv_core.services.integrations``."""

from bhiv_core.services.integrations.server import serve

serve()
