"""The identity service's settings, read once at start; a bad value fails fast with a ConfigError.

Every setting is a ``BHIV_*`` variable (or the same key in lower case in the TOML file) read
through :class:`~bhiv_core.runtime.config.Settings`, so the message of a bad one names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bhiv_core.runtime.config import ConfigError, RuntimeConfig, jwt_settings
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["DEFAULT_MIN_ROTATION_SECONDS", "IdentityConfig", "LoginThrottleSettings"]

_DAY = 24 * 3600

DEFAULT_MIN_ROTATION_SECONDS = 300
"""The shortest time between two signing-key rotations on request, in seconds.

``BHIV_SIGNING_KEY_MIN_ROTATION_SECONDS``.
"""

MIN_SCRYPT_LOG_N = 12
"""The weakest scrypt cost accepted (n = 4096), meant for tests only."""

MAX_SCRYPT_LOG_N = 20
"""The strongest scrypt cost accepted (n = 2**20, 1 GiB of memory with r = 8)."""


@dataclass(frozen=True, slots=True)
class LoginThrottleSettings:
    """How failed logins back off (see :mod:`bhiv_core.services.identity.throttle`).

    Each counter backs off once it reaches its threshold: 1 s, then twice as long with each
    further failure, up to ``max_backoff_seconds``.

    Attributes:
        account_address_after: ``BHIV_LOGIN_BACKOFF_AFTER``, failures of one username from one
            client address (default 5).
        address_after: ``BHIV_LOGIN_ADDRESS_BACKOFF_AFTER``, failures from one client address
            whatever the username: password spraying (default 20).
        account_after: ``BHIV_LOGIN_ACCOUNT_BACKOFF_AFTER``, failures of one username from every
            address together (default 100): much higher, so locking someone out takes many addresses.
        max_backoff_seconds: ``BHIV_LOGIN_BACKOFF_MAX_SECONDS``, the longest single backoff (default 900).
        window_seconds: ``BHIV_LOGIN_FAILURE_WINDOW_SECONDS``, how long a counter outlives its last
            failure and the end of its backoff before it is forgotten (default 900).
        max_entries: ``BHIV_LOGIN_THROTTLE_MAX_ENTRIES``, the most counters kept (default 100000);
            beyond it the oldest ones not backing off are forgotten first.

    """

    account_address_after: int = 5
    address_after: int = 20
    account_after: int = 100
    max_backoff_seconds: int = 900
    window_seconds: int = 900
    max_entries: int = 100_000


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """What the identity service needs beyond the shared runtime.

    Attributes:
        data_dir: Where ``identity.db``, ``identity-kek`` and ``admin-credentials`` live
            (``BHIV_DATA_DIR``).
        store_url: ``BHIV_IDENTITY_STORE_URL``: a ``mongodb://`` URL selects MongoDB; unset means
            the embedded SQLite file ``<data_dir>/identity.db``.
        mongo_database: ``BHIV_IDENTITY_MONGO_DATABASE``, the database name (default ``bhiv_identity``).
        kek_path: ``BHIV_IDENTITY_KEK_FILE``, the key-encryption key file (default
            ``<data_dir>/identity-kek``); every replica sharing a MongoDB store needs the same one.
        issuer: ``BHIV_JWT_ISSUER``, the ``iss`` of access tokens (default ``bhiv-identity``).
        audience: ``BHIV_JWT_AUDIENCE``, the ``aud`` of access tokens (default ``bhiv-core``).
        access_ttl_seconds: ``BHIV_ACCESS_TOKEN_TTL_SECONDS``, access-token lifetime (default 900).
        refresh_ttl_seconds: ``BHIV_REFRESH_TOKEN_TTL_SECONDS``, refresh-token lifetime (default 14 days).
        session_max_seconds: ``BHIV_SESSION_MAX_SECONDS``, the absolute lifetime of a login session
            (a refresh family): rotation never extends it past this many seconds after the login
            (default 30 days).
        signing_key_max_age_seconds: ``BHIV_SIGNING_KEY_MAX_AGE_SECONDS``, age at which the signing
            key is rotated automatically (default 30 days).
        signing_key_overlap_seconds: ``BHIV_SIGNING_KEY_OVERLAP_SECONDS``, how long a retired key
            stays published (default twice the access-token lifetime; never shorter than it).
        signing_key_min_rotation_seconds: ``BHIV_SIGNING_KEY_MIN_ROTATION_SECONDS``, the shortest
            time between a rotation and a ``RotateSigningKey`` (default 300): with the overlap it
            bounds the published keys to ``1 + overlap / this``.
        key_check_interval_seconds: ``BHIV_SIGNING_KEY_CHECK_SECONDS``, how often the rotation and
            pruning housekeeping runs (default 3600).
        scrypt_log_n: ``BHIV_SCRYPT_LOG_N``, log2 of the scrypt cost n (default 15, 12 to 20).
        sentinel_address: Where security events go, ``host:port`` of sentinel (from the peers).
        report_queue_size: ``BHIV_IDENTITY_REPORT_QUEUE_SIZE``, security events waiting to be sent
            before new ones are dropped (default 1000).
        login_throttle: How failed logins back off (``BHIV_LOGIN_*``).

    """

    data_dir: Path
    store_url: str | None
    mongo_database: str
    kek_path: Path
    issuer: str
    audience: str
    access_ttl_seconds: int
    refresh_ttl_seconds: int
    session_max_seconds: int
    signing_key_max_age_seconds: int
    signing_key_overlap_seconds: int
    signing_key_min_rotation_seconds: int
    key_check_interval_seconds: float
    scrypt_log_n: int
    sentinel_address: str
    report_queue_size: int
    login_throttle: LoginThrottleSettings = LoginThrottleSettings()

    @property
    def sqlite_path(self) -> Path:
        """The embedded store's file, ``<data_dir>/identity.db``."""
        return self.data_dir / "identity.db"

    @property
    def admin_credentials_path(self) -> Path:
        """Where the first start writes the generated admin password, ``<data_dir>/admin-credentials``."""
        return self.data_dir / "admin-credentials"

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> IdentityConfig:
        """Reads every identity setting once; raises ConfigError naming a bad one."""
        s = config.settings
        store_url = mongo_url_setting(s, "IDENTITY_STORE_URL", "the embedded SQLite store")
        access_ttl = s.positive_int("ACCESS_TOKEN_TTL_SECONDS", 900)
        overlap = s.positive_int("SIGNING_KEY_OVERLAP_SECONDS", 2 * access_ttl)
        if overlap < access_ttl:
            # A retired key must outlive every token it signed, or those tokens stop verifying early.
            raise ConfigError(
                f"BHIV_SIGNING_KEY_OVERLAP_SECONDS must be at least BHIV_ACCESS_TOKEN_TTL_SECONDS "
                f"({access_ttl}), got {overlap}"
            )

        def log_n(raw: str) -> int:
            value = int(raw)
            if not MIN_SCRYPT_LOG_N <= value <= MAX_SCRYPT_LOG_N:
                raise ValueError(raw)
            return value

        issuer, audience = jwt_settings(config)
        kek = s.raw("IDENTITY_KEK_FILE")
        return cls(
            data_dir=config.data_dir,
            store_url=store_url,
            mongo_database=s.raw("IDENTITY_MONGO_DATABASE") or "bhiv_identity",
            kek_path=Path(kek).resolve() if kek else config.data_dir / "identity-kek",
            issuer=issuer,
            audience=audience,
            access_ttl_seconds=access_ttl,
            refresh_ttl_seconds=s.positive_int("REFRESH_TOKEN_TTL_SECONDS", 14 * _DAY),
            session_max_seconds=s.positive_int("SESSION_MAX_SECONDS", 30 * _DAY),
            signing_key_max_age_seconds=s.positive_int("SIGNING_KEY_MAX_AGE_SECONDS", 30 * _DAY),
            signing_key_overlap_seconds=overlap,
            signing_key_min_rotation_seconds=s.positive_int(
                "SIGNING_KEY_MIN_ROTATION_SECONDS", DEFAULT_MIN_ROTATION_SECONDS
            ),
            key_check_interval_seconds=s.positive_float("SIGNING_KEY_CHECK_SECONDS", 3600.0),
            scrypt_log_n=s.get(
                "SCRYPT_LOG_N", 15, log_n, f"an integer from {MIN_SCRYPT_LOG_N} to {MAX_SCRYPT_LOG_N}"
            ),
            sentinel_address=config.peers.get("sentinel", ""),
            report_queue_size=s.positive_int("IDENTITY_REPORT_QUEUE_SIZE", 1000),
            login_throttle=LoginThrottleSettings(
                account_address_after=s.positive_int("LOGIN_BACKOFF_AFTER", 5),
                address_after=s.positive_int("LOGIN_ADDRESS_BACKOFF_AFTER", 20),
                account_after=s.positive_int("LOGIN_ACCOUNT_BACKOFF_AFTER", 100),
                max_backoff_seconds=s.positive_int("LOGIN_BACKOFF_MAX_SECONDS", 900),
                window_seconds=s.positive_int("LOGIN_FAILURE_WINDOW_SECONDS", 900),
                max_entries=s.positive_int("LOGIN_THROTTLE_MAX_ENTRIES", 100_000),
            ),
        )
