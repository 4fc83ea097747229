from __future__ import annotations

from pathlib import Path

import pytest

from bhiv_core.runtime.config import ConfigError
from bhiv_core.services.identity.config import IdentityConfig, LoginThrottleSettings
from bhiv_core.services.identity.throttle import backoff_seconds
from tests.harness import config_for


def settings(tmp_path: Path, **env: str) -> IdentityConfig:
    return IdentityConfig.from_runtime(config_for(DATA_DIR=str(tmp_path), **env))


def test_defaults(tmp_path: Path) -> None:
    config = settings(tmp_path)
    assert config.store_url is None
    assert config.sqlite_path == tmp_path / "identity.db"
    assert config.kek_path == tmp_path / "identity-kek"
    assert config.admin_credentials_path == tmp_path / "admin-credentials"
    assert (config.issuer, config.audience) == ("bhiv-identity", "bhiv-core")
    assert (config.access_ttl_seconds, config.refresh_ttl_seconds) == (900, 14 * 24 * 3600)
    assert config.session_max_seconds == 30 * 24 * 3600
    assert config.signing_key_max_age_seconds == 30 * 24 * 3600
    assert config.signing_key_overlap_seconds == 1800
    assert config.signing_key_min_rotation_seconds == 300
    assert config.scrypt_log_n == 15
    assert config.sentinel_address == "127.0.0.1:50057"
    assert config.login_throttle == LoginThrottleSettings(
        account_address_after=5,
        address_after=20,
        account_after=100,
        max_backoff_seconds=900,
        window_seconds=900,
        max_entries=100_000,
    )


def test_login_throttle_settings_are_read(tmp_path: Path) -> None:
    config = settings(
        tmp_path,
        LOGIN_BACKOFF_AFTER="3",
        LOGIN_ADDRESS_BACKOFF_AFTER="10",
        LOGIN_ACCOUNT_BACKOFF_AFTER="50",
        LOGIN_BACKOFF_MAX_SECONDS="60",
        LOGIN_FAILURE_WINDOW_SECONDS="300",
        LOGIN_THROTTLE_MAX_ENTRIES="1000",
    )
    assert config.login_throttle == LoginThrottleSettings(3, 10, 50, 60, 300, 1000)


def test_the_minimum_rotation_interval_is_read(tmp_path: Path) -> None:
    assert settings(tmp_path, SIGNING_KEY_MIN_ROTATION_SECONDS="60").signing_key_min_rotation_seconds == 60


def test_overlap_defaults_to_twice_the_access_token_lifetime(tmp_path: Path) -> None:
    assert settings(tmp_path, ACCESS_TOKEN_TTL_SECONDS="60").signing_key_overlap_seconds == 120


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"SCRYPT_LOG_N": "11"}, "BHIV_SCRYPT_LOG_N"),
        ({"SCRYPT_LOG_N": "21"}, "BHIV_SCRYPT_LOG_N"),
        ({"SCRYPT_LOG_N": "fast"}, "BHIV_SCRYPT_LOG_N"),
        ({"ACCESS_TOKEN_TTL_SECONDS": "0"}, "BHIV_ACCESS_TOKEN_TTL_SECONDS"),
        ({"REFRESH_TOKEN_TTL_SECONDS": "-5"}, "BHIV_REFRESH_TOKEN_TTL_SECONDS"),
        ({"SESSION_MAX_SECONDS": "0"}, "BHIV_SESSION_MAX_SECONDS"),
        ({"SIGNING_KEY_MAX_AGE_SECONDS": "soon"}, "BHIV_SIGNING_KEY_MAX_AGE_SECONDS"),
        (
            {"ACCESS_TOKEN_TTL_SECONDS": "900", "SIGNING_KEY_OVERLAP_SECONDS": "600"},
            "BHIV_SIGNING_KEY_OVERLAP_SECONDS",
        ),
        ({"SIGNING_KEY_MIN_ROTATION_SECONDS": "0"}, "BHIV_SIGNING_KEY_MIN_ROTATION_SECONDS"),
        ({"IDENTITY_STORE_URL": "postgres://db/identity"}, "BHIV_IDENTITY_STORE_URL"),
        ({"LOGIN_BACKOFF_AFTER": "0"}, "BHIV_LOGIN_BACKOFF_AFTER"),
        ({"LOGIN_ADDRESS_BACKOFF_AFTER": "many"}, "BHIV_LOGIN_ADDRESS_BACKOFF_AFTER"),
        ({"LOGIN_ACCOUNT_BACKOFF_AFTER": "-1"}, "BHIV_LOGIN_ACCOUNT_BACKOFF_AFTER"),
        ({"LOGIN_BACKOFF_MAX_SECONDS": "0"}, "BHIV_LOGIN_BACKOFF_MAX_SECONDS"),
        ({"LOGIN_FAILURE_WINDOW_SECONDS": "1.5"}, "BHIV_LOGIN_FAILURE_WINDOW_SECONDS"),
        ({"LOGIN_THROTTLE_MAX_ENTRIES": "0"}, "BHIV_LOGIN_THROTTLE_MAX_ENTRIES"),
    ],
)
def test_bad_setting_is_a_config_error_naming_it(tmp_path: Path, env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        settings(tmp_path, **env)


def test_mongodb_url_and_overrides_are_read(tmp_path: Path) -> None:
    config = settings(
        tmp_path,
        IDENTITY_STORE_URL="mongodb://db:27017/?replicaSet=rs0",
        IDENTITY_MONGO_DATABASE="ident",
        IDENTITY_KEK_FILE=str(tmp_path / "secrets" / "kek"),
        JWT_ISSUER="https://id.example",
        JWT_AUDIENCE="api",
        SCRYPT_LOG_N="12",
        SENTINEL_ADDR="sentinel:7000",
    )
    assert (config.store_url, config.mongo_database) == ("mongodb://db:27017/?replicaSet=rs0", "ident")
    assert config.kek_path == tmp_path / "secrets" / "kek"
    assert (config.issuer, config.audience, config.scrypt_log_n) == ("https://id.example", "api", 12)
    assert config.sentinel_address == "sentinel:7000"


def test_backoff_starts_at_the_threshold_and_doubles_up_to_the_maximum() -> None:
    assert [backoff_seconds(n, 5, 900) for n in range(1, 10)] == [0, 0, 0, 0, 1, 2, 4, 8, 16]
    assert backoff_seconds(15, 5, 900) == 900
    assert backoff_seconds(10_000, 5, 900) == 900
    assert [backoff_seconds(n, 20, 900) for n in (19, 20, 21)] == [0, 1, 2]
