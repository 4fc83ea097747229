"""The Envoy edge: its bootstrap, generated from the registry of services, and the Envoy process.

* :mod:`~bhiv_core.edge.envoy_config` builds the bootstrap with typed Envoy API objects
  (``envoy-data-plane``) and writes it as JSON;
* :mod:`~bhiv_core.edge.process` validates a bootstrap and runs Envoy until it is LIVE;
* :mod:`~bhiv_core.edge.binaries` finds the pinned ``envoy``, ``grpcurl`` and ``buf``.

Import from the submodules. This package imports none of them itself, so finding a binary does
not pay for loading the Envoy API (about 0.7 s).
"""

__all__ = ["binaries", "envoy_config", "process"]
