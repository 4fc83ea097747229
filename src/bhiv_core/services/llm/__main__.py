"""Runs the llm service: ``python -m bhiv_core.services.llm``."""

from bhiv_core.services.llm.server import serve

serve()
