"""Configuration, read once at start from the environment and an optional TOML file.

Every setting has an environment name ``BHIV_<NAME>``; a TOML file named by ``BHIV_CONFIG_FILE``
may set the same keys in lower case without the prefix (``crm_port = 6000``). The environment wins.
A bad or missing value fails fast with a :class:`ConfigError` that names the setting. The names are
listed once, in :mod:`bhiv_core.runtime.known_settings`; a setting given that is not listed there is
reported by :meth:`Settings.unknown` (the launcher and each service warn at start).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from bhiv_core.registry import EDGE_SOURCE_ADDRESS, SERVICES, by_name
from bhiv_core.runtime.known_settings import closest_setting, is_known_setting
from bhiv_core.runtime.logging import DEFAULT_LOG_BACKUPS, DEFAULT_LOG_MAX_BYTES
from bhiv_core.security.address import Network, parse_edge_peers

__all__ = [
    "ConfigError",
    "RuntimeConfig",
    "Settings",
    "jwt_settings",
    "load_config",
    "revocation_poll_seconds",
]

T = TypeVar("T")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


class Settings:
    """Raw settings: the environment over the optional TOML file, with typed getters.

    Args:
        env: The environment (defaults to ``os.environ``).

    """

    def __init__(self, env: Mapping[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        values: dict[str, str] = {}
        # Where each setting was given, as written there: for warnings about unknown ones.
        given: dict[str, str] = {}
        path = env.get("BHIV_CONFIG_FILE")
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"BHIV_CONFIG_FILE={path}: cannot read: {exc}") from exc
            for key, value in data.items():
                values[f"BHIV_{key.upper()}"] = str(value)
                given[f"BHIV_{key.upper()}"] = f"{key} in {path}"
        for key, value in env.items():
            if key.startswith("BHIV_"):
                values[key] = value
                given[key] = f"{key} in the environment"
        self._values = values
        self._given = given

    def unknown(self) -> list[str]:
        """Describes each setting given (environment or file) that nothing reads, with a suggestion.

        Returns:
            One line per unknown setting, like ``BHIV_ACCES_TOKEN_TTL in the environment (did you
            mean BHIV_ACCESS_TOKEN_TTL_SECONDS?)``; empty when every setting is known.

        """
        lines = []
        for key, where in sorted(self._given.items()):
            name = key.removeprefix("BHIV_")
            if is_known_setting(name):
                continue
            closest = closest_setting(name)
            lines.append(f"{where} (did you mean BHIV_{closest}?)" if closest else where)
        return lines

    def raw(self, name: str) -> str | None:
        """Returns the setting ``BHIV_<name>`` as a string, or None when unset or empty.

        Raises:
            LookupError: ``name`` is not in :mod:`~bhiv_core.runtime.known_settings` (a bug: the
                launcher would warn that the setting is unknown).

        """
        if not is_known_setting(name):
            raise LookupError(
                f"BHIV_{name} is read but not listed in bhiv_core/runtime/known_settings.py: add it there "
                "and to the README's configuration table"
            )
        value = self._values.get(f"BHIV_{name}")
        return value if value not in (None, "") else None

    def get(self, name: str, default: T, parse: Callable[[str], T], what: str) -> T:
        """Returns the parsed setting, or ``default``; ``what`` describes a valid value for errors."""
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"BHIV_{name} must be {what}, got {raw!r}") from exc

    def port(self, name: str, default: int) -> int:
        """Returns a TCP port setting (0 means any free port)."""

        def parse(raw: str) -> int:
            port = int(raw)
            if not 0 <= port <= 65535:
                raise ValueError(raw)
            return port

        return self.get(name, default, parse, "a port number 0-65535")

    def positive_int(self, name: str, default: int) -> int:
        """Returns an integer setting that must be at least 1."""

        def parse(raw: str) -> int:
            value = int(raw)
            if value < 1:
                raise ValueError(raw)
            return value

        return self.get(name, default, parse, "an integer >= 1")

    def positive_float(self, name: str, default: float) -> float:
        """Returns a number setting that must be greater than 0."""

        def parse(raw: str) -> float:
            value = float(raw)
            if value <= 0:
                raise ValueError(raw)
            return value

        return self.get(name, default, parse, "a number > 0")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """Returns a setting that must be one of ``choices`` (case-insensitive)."""

        def parse(raw: str) -> str:
            value = raw.lower()
            if value not in choices:
                raise ValueError(raw)
            return value

        return self.get(name, default, parse, "one of " + ", ".join(choices))


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """What the shared runtime needs to run one service.

    Attributes:
        service: The registry name of the service.
        host: The address to bind (``BHIV_HOST``, default 127.0.0.1).
        port: The gRPC port (``BHIV_<SERVICE>_PORT``).
        metrics_port: The Prometheus port (``BHIV_<SERVICE>_METRICS_PORT``; 0 disables).
        data_dir: Where embedded stores keep their files (``BHIV_DATA_DIR``, default ``.data``).
        workers: Processes sharing the port (``BHIV_<SERVICE>_WORKERS``, default 1).
        max_message_bytes: Largest request or response (``BHIV_MAX_MESSAGE_BYTES``, default 4 MiB).
        max_concurrent_rpcs: In-flight RPCs per process before RESOURCE_EXHAUSTED
            (``BHIV_MAX_CONCURRENT_RPCS``, default 1000).
        grace_seconds: How long in-flight calls may drain on shutdown (``BHIV_GRACE_SECONDS``, 10).
        health_interval_seconds: How often dependency checks run (``BHIV_HEALTH_INTERVAL_SECONDS``, 5).
        log_level: ``BHIV_LOG_LEVEL`` (debug, info, warning, error; default info).
        log_format: ``BHIV_LOG_FORMAT`` (json or text; default json).
        log_dir: Where the log file goes (``BHIV_LOG_DIR``); None, the default, logs to stderr.
        log_max_bytes: Size at which the log file rotates (``BHIV_LOG_MAX_BYTES``, 10 MiB).
        log_backups: Rotated log files kept (``BHIV_LOG_BACKUPS``, 5).
        edge_peers: The TCP peers whose ``x-envoy-external-address`` is believed
            (``BHIV_EDGE_PEERS``, default 127.0.0.2: the mesh's Envoy).
        peers: The address of every service of the mesh (``BHIV_<SERVICE>_ADDR``, default
            ``<host>:<port>``), for service-to-service calls.
        settings: The raw settings, for service-specific options.

    """

    service: str
    host: str
    port: int
    metrics_port: int
    data_dir: Path
    workers: int
    max_message_bytes: int
    max_concurrent_rpcs: int
    grace_seconds: float
    health_interval_seconds: float
    log_level: str
    log_format: str
    log_dir: Path | None = None
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_backups: int = DEFAULT_LOG_BACKUPS
    edge_peers: tuple[Network, ...] = field(default_factory=lambda: parse_edge_peers(EDGE_SOURCE_ADDRESS))
    peers: Mapping[str, str] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)

    @property
    def address(self) -> str:
        """``host:port`` of this service."""
        return f"{self.host}:{self.port}"


def jwt_settings(config: RuntimeConfig) -> tuple[str, str]:
    """The issuer and audience of access tokens (``BHIV_JWT_ISSUER``, ``BHIV_JWT_AUDIENCE``).

    Identity issues tokens with them and every service's verifier requires them: one definition,
    so the two sides cannot drift apart.
    """
    return token_claims(config.settings)


DEFAULT_JWT_LEEWAY_S: Final = 30.0
"""Seconds of clock skew allowed on a token's ``exp`` (``BHIV_JWT_LEEWAY_SECONDS``), by services and edge."""


def token_claims(settings: Settings) -> tuple[str, str]:
    """The issuer and audience of access tokens from raw settings: :func:`jwt_settings` for the edge."""
    return settings.raw("JWT_ISSUER") or "bhiv-identity", settings.raw("JWT_AUDIENCE") or "bhiv-core"


def revocation_poll_seconds(config: RuntimeConfig) -> float:
    """How often a process re-reads the whole revocation list (``BHIV_REVOCATION_POLL_SECONDS``, 300).

    Identity pushes each revocation as it commits it; this poll is only the safety net.
    """
    return config.settings.positive_float("REVOCATION_POLL_SECONDS", 300.0)


def load_config(service: str, env: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Reads the configuration of ``service`` once; raises :class:`ConfigError` on a bad setting."""
    try:
        spec = by_name(service)
    except KeyError:
        raise ConfigError(f"unknown service {service!r}") from None
    s = Settings(env)
    key = service.upper()
    host = s.raw("HOST") or "127.0.0.1"
    peers = {}
    for other in SERVICES:
        port = s.port(f"{other.name.upper()}_PORT", other.port)
        peers[other.name] = s.raw(f"{other.name.upper()}_ADDR") or f"{host}:{port}"
    return RuntimeConfig(
        service=service,
        host=host,
        port=s.port(f"{key}_PORT", spec.port),
        metrics_port=s.port(f"{key}_METRICS_PORT", spec.metrics_port),
        data_dir=Path(s.raw("DATA_DIR") or ".data").resolve(),
        workers=s.positive_int(f"{key}_WORKERS", 1),
        max_message_bytes=s.positive_int("MAX_MESSAGE_BYTES", 4 * 1024 * 1024),
        max_concurrent_rpcs=s.positive_int("MAX_CONCURRENT_RPCS", 1000),
        grace_seconds=s.positive_float("GRACE_SECONDS", 10.0),
        health_interval_seconds=s.positive_float("HEALTH_INTERVAL_SECONDS", 5.0),
        log_level=s.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=s.choice("LOG_FORMAT", "json", ("json", "text")),
        log_dir=Path(log_dir).resolve() if (log_dir := s.raw("LOG_DIR")) else None,
        log_max_bytes=s.positive_int("LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES),
        log_backups=s.positive_int("LOG_BACKUPS", DEFAULT_LOG_BACKUPS),
        edge_peers=s.get(
            "EDGE_PEERS", parse_edge_peers(EDGE_SOURCE_ADDRESS), parse_edge_peers, "IP addresses or networks"
        ),
        peers=peers,
        settings=s,
    )
