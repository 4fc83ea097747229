"""Runs the identity service: ``python -m bhiv_core.services.identity``."""

from bhiv_core.services.identity.server import serve

serve()
