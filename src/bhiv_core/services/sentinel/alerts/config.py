"""The alert settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bhiv_core.runtime.config import ConfigError, RuntimeConfig, Settings
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["AlertConfig", "SmtpRelay"]


@dataclass(frozen=True, slots=True)
class SmtpRelay:
    """The SMTP relay e-mail channels send through.

    Attributes:
        host: ``BHIV_ALERT_SMTP_HOST``; None when e-mail is not configured (e-mail alerts then
            fail with a message saying so).
        port: ``BHIV_ALERT_SMTP_PORT`` (default 587, the submission port).
        starttls: ``BHIV_ALERT_SMTP_STARTTLS`` (default true): upgrade with STARTTLS and verify
            the relay's certificate before anything else is sent; a relay without STARTTLS fails.
        ca_file: ``BHIV_ALERT_SMTP_CA_FILE``: CA certificates to verify the relay with instead of
            the system's.
        username: ``BHIV_ALERT_SMTP_USERNAME``; empty sends without AUTH.
        password: Read from the file ``BHIV_ALERT_SMTP_PASSWORD_FILE`` (never from the
            environment, never through the API).
        sender: ``BHIV_ALERT_SMTP_FROM`` (default ``bhiv-sentinel@localhost``).

    """

    host: str | None
    port: int = 587
    starttls: bool = True
    ca_file: Path | None = None
    username: str = ""
    password: str = ""
    sender: str = "bhiv-sentinel@localhost"

    def __repr__(self) -> str:
        return f"SmtpRelay(host={self.host!r}, port={self.port}, starttls={self.starttls})"


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """How sentinel stores and delivers alerts.

    Attributes:
        store_url: ``BHIV_SENTINEL_STORE_URL`` (a MongoDB URL), or None for
            ``<data_dir>/sentinel-alerts.db``.
        kek_path: ``BHIV_ALERT_KEK_FILE``, the AES-256 key that encrypts channel secrets at rest
            (default ``<data_dir>/sentinel-alert-kek``, created 0600 when missing).
        smtp: The SMTP relay.
        dedup_seconds: ``BHIV_ALERT_DEDUP_SECONDS``: an alert with the same dedup key is sent to a
            channel at most once in this window (default 300).
        rate_limit: ``BHIV_ALERT_RATE_LIMIT``: the most alerts one channel gets per rate window
            (default 20); more are dropped and logged.
        rate_window_seconds: ``BHIV_ALERT_RATE_WINDOW_SECONDS`` (default 3600).
        max_attempts: ``BHIV_ALERT_MAX_ATTEMPTS``: delivery attempts before an alert is FAILED
            (default 5).
        backoff_seconds: ``BHIV_ALERT_BACKOFF_SECONDS``: the wait before the second attempt,
            doubling per attempt up to :attr:`backoff_max_seconds`, with jitter (default 2).
        backoff_max_seconds: The longest wait between two attempts (300 s).
        timeout_seconds: ``BHIV_ALERT_TIMEOUT_SECONDS``: the bound on one attempt (connect, send,
            read the answer; default 10).

    """

    store_url: str | None
    kek_path: Path
    smtp: SmtpRelay
    dedup_seconds: float = 300.0
    rate_limit: int = 20
    rate_window_seconds: float = 3600.0
    max_attempts: int = 5
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    timeout_seconds: float = 10.0

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> AlertConfig:
        """Reads every alert setting once; raises ConfigError naming a bad one."""
        s = config.settings
        kek = s.raw("ALERT_KEK_FILE")
        return cls(
            store_url=mongo_url_setting(
                s, "SENTINEL_STORE_URL", "the SQLite file <data_dir>/sentinel-alerts.db"
            ),
            kek_path=Path(kek).resolve() if kek else config.data_dir / "sentinel-alert-kek",
            smtp=_smtp(s),
            dedup_seconds=s.positive_float("ALERT_DEDUP_SECONDS", 300.0),
            rate_limit=s.positive_int("ALERT_RATE_LIMIT", 20),
            rate_window_seconds=s.positive_float("ALERT_RATE_WINDOW_SECONDS", 3600.0),
            max_attempts=s.get("ALERT_MAX_ATTEMPTS", 5, _attempts, "an integer 1-20"),
            backoff_seconds=s.positive_float("ALERT_BACKOFF_SECONDS", 2.0),
            timeout_seconds=s.positive_float("ALERT_TIMEOUT_SECONDS", 10.0),
        )


def _attempts(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 20:
        raise ValueError(raw)
    return value


def _smtp(s: Settings) -> SmtpRelay:
    password_file = s.raw("ALERT_SMTP_PASSWORD_FILE")
    password = ""
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"BHIV_ALERT_SMTP_PASSWORD_FILE cannot be read: {exc.strerror}") from exc
    ca = s.raw("ALERT_SMTP_CA_FILE")
    return SmtpRelay(
        host=s.raw("ALERT_SMTP_HOST"),
        port=s.port("ALERT_SMTP_PORT", 587),
        starttls=s.get("ALERT_SMTP_STARTTLS", True, _flag, "true or false"),
        ca_file=Path(ca) if ca else None,
        username=s.raw("ALERT_SMTP_USERNAME") or "",
        password=password,
        sender=s.raw("ALERT_SMTP_FROM") or "bhiv-sentinel@localhost",
    )
