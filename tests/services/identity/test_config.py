from __future__ import annotations

from pathlib import Path

import pytest

from bhiv_core.runtime.config import ConfigError
from bhiv_core.services.identity.config import IdentityConfig
from bhiv_core.services.identity.service import lock_seconds
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
    assert config.scrypt_log_n == 15
    assert config.sentinel_address == "127.0.0.1:50057"


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
        ({"IDENTITY_STORE_URL": "postgres://db/identity"}, "BHIV_IDENTITY_STORE_URL"),
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


def test_lockout_starts_at_the_fifth_failure_and_doubles_up_to_fifteen_minutes() -> None:
    assert [lock_seconds(n) for n in range(1, 10)] == [0, 0, 0, 0, 1, 2, 4, 8, 16]
    assert lock_seconds(15) == 900
    assert lock_seconds(10_000) == 900
