"""Outbound HTTP: what leaves the mesh for an address someone configured.

- :mod:`.signatures`: the ``X-BHIV-Signature: t=<unix>,v1=<hex>`` HMAC-SHA256 scheme that signs
  every webhook delivery and generic-webhook alert, and its reference verifier for receivers.
- :mod:`.http`: the one SSRF-safe HTTP client (outbound allowlist, the resolved address checked
  at connect time and on every redirect, IPv6 forms included, timeouts and response-size caps)
  that integrations' external calls and webhook deliveries use.
"""

__all__: list[str] = []
