"""Runs the orchestration service: ``python -m bhiv_core.services.orchestration``."""

from bhiv_core.services.orchestration.server import serve

serve()
