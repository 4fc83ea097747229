"""What every service process sets up once, before anything else: privacy, logging, edge trust."""

from __future__ import annotations

import os

from bhiv_core.runtime.config import ConfigError, RuntimeConfig
from bhiv_core.runtime.files import PRIVATE_UMASK, private_dir
from bhiv_core.runtime.logging import configure_logging, log_file
from bhiv_core.security.address import trust_edge_peers

__all__ = ["prepare_process"]


def prepare_process(config: RuntimeConfig, worker: int | None = None) -> None:
    """Makes what this process writes private, starts its logging and sets the edge it trusts.

    The umask makes files that code outside the platform creates (SQLite's ``-wal`` and ``-shm``,
    prometheus_client's shared files) owner-only; the data directory becomes 0700.

    Args:
        config: The service's configuration.
        worker: The worker's number when the service runs several processes, else None.

    Raises:
        ConfigError: The data directory or the log file cannot be made or written.

    """
    os.umask(PRIVATE_UMASK)
    try:
        private_dir(config.data_dir)
    except OSError as exc:
        raise ConfigError(f"BHIV_DATA_DIR={config.data_dir} cannot be made private (0700): {exc}") from exc
    file = None if config.log_dir is None else log_file(config.log_dir, config.service, worker)
    try:
        configure_logging(
            config.service,
            config.log_level,
            config.log_format,
            file=file,
            max_bytes=config.log_max_bytes,
            backups=config.log_backups,
        )
    except OSError as exc:
        raise ConfigError(f"BHIV_LOG_DIR={config.log_dir}: cannot write {file}: {exc}") from exc
    trust_edge_peers(config.edge_peers)
