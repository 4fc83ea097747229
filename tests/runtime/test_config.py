from __future__ import annotations

import pytest

from bhiv_core.runtime.config import ConfigError, Settings, load_config


def test_defaults_come_from_the_registry() -> None:
    config = load_config("crm", {})
    assert (config.host, config.port, config.workers) == ("127.0.0.1", 50053, 1)
    assert config.peers["identity"] == "127.0.0.1:50051"


def test_environment_overrides_file(tmp_path) -> None:
    path = tmp_path / "bhiv.toml"
    path.write_text('crm_port = 6001\nlog_level = "debug"\n')
    config = load_config("crm", {"BHIV_CONFIG_FILE": str(path), "BHIV_CRM_PORT": "6002"})
    assert config.port == 6002
    assert config.log_level == "debug"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BHIV_CRM_PORT": "http"}, "BHIV_CRM_PORT"),
        ({"BHIV_CRM_PORT": "70000"}, "BHIV_CRM_PORT"),
        ({"BHIV_CRM_WORKERS": "0"}, "BHIV_CRM_WORKERS"),
        ({"BHIV_LOG_LEVEL": "loud"}, "BHIV_LOG_LEVEL"),
        ({"BHIV_CONFIG_FILE": "/nonexistent/bhiv.toml"}, "BHIV_CONFIG_FILE"),
    ],
)
def test_bad_setting_is_a_clear_error_naming_it(env, named) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config("crm", env)


def test_log_and_edge_settings_default_to_stderr_and_the_mesh_edge() -> None:
    config = load_config("crm", {})
    assert (config.log_dir, config.log_max_bytes, config.log_backups) == (None, 10 * 1024 * 1024, 5)
    assert [str(n) for n in config.edge_peers] == ["127.0.0.2/32"]


def test_log_and_edge_settings_are_read_from_the_environment(tmp_path) -> None:
    config = load_config(
        "crm",
        {
            "BHIV_LOG_DIR": str(tmp_path),
            "BHIV_LOG_MAX_BYTES": "4096",
            "BHIV_LOG_BACKUPS": "2",
            "BHIV_EDGE_PEERS": "10.20.0.0/16, 192.0.2.7",
        },
    )
    assert (config.log_dir, config.log_max_bytes, config.log_backups) == (tmp_path, 4096, 2)
    assert [str(n) for n in config.edge_peers] == ["10.20.0.0/16", "192.0.2.7/32"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BHIV_LOG_MAX_BYTES": "0"}, "BHIV_LOG_MAX_BYTES"),
        ({"BHIV_LOG_BACKUPS": "0"}, "BHIV_LOG_BACKUPS"),
        ({"BHIV_EDGE_PEERS": "edge.internal"}, "BHIV_EDGE_PEERS"),
        ({"BHIV_EDGE_PEERS": " , "}, "BHIV_EDGE_PEERS"),
    ],
)
def test_bad_log_or_edge_setting_is_a_clear_error_naming_it(env, named) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config("crm", env)


def test_unknown_settings_are_named_with_where_they_were_given(tmp_path) -> None:
    path = tmp_path / "bhiv.toml"
    path.write_text("crm_port = 6001\nacess_token_ttl_seconds = 60\n")
    settings = Settings({"BHIV_CONFIG_FILE": str(path), "BHIV_CRM_WORKERS": "2", "BHIV_NO_SUCH": "1"})
    assert settings.unknown() == [
        f"acess_token_ttl_seconds in {path} (did you mean BHIV_ACCESS_TOKEN_TTL_SECONDS?)",
        "BHIV_NO_SUCH in the environment",
    ]


def test_every_setting_read_is_known() -> None:
    assert Settings({}).unknown() == []
    with pytest.raises(LookupError, match="BHIV_NOT_LISTED is read but not listed in"):
        Settings({}).raw("NOT_LISTED")
