"""Runs the sentinel service: ``python -m bhiv_core.services.sentinel``."""

from bhiv_core.services.sentinel.server import serve

serve()
