"""Integrations and external API calls: stored connections with sealed credentials, SSRF-safe calls.

``IntegrationService`` and ``ExternalApiService`` of ``bhiv.integrations.v1``.
"""

__all__: list[str] = []
