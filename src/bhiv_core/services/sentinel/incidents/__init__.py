"""Sentinel's incidents and threat response: detections grouped, acted on, listed and streamed.

- :mod:`.resources`: incidents (and the blocks made for them) as resource-kit collections in
  ``<data_dir>/sentinel-incidents.db`` (or the MongoDB of ``BHIV_SENTINEL_STORE_URL``).
- :mod:`.incidents`: grouping of detections into incidents, the ListIncidents / GetIncident /
  UpdateIncident rules, and the ledger the response agent claims its actions in.
- :mod:`.stream`: the live fan-out of threat events to StreamThreatEvents subscribers, bounded.
- :mod:`.sink`: the detection sink (store, group, publish) and the response queue and worker.
- :mod:`.servicer`: ``bhiv.sentinel.v1.ThreatService``.
- :mod:`.service`: all of it as one unit with its settings and lifetime.
"""

__all__: list[str] = []
