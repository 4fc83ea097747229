"""The launcher reads the services' settings as they will: bad ones fail first, shared ones agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from bhiv_core.mesh import Mesh, MeshError, _from_settings
from bhiv_core.runtime.config import Settings


async def test_a_bad_setting_fails_before_anything_starts(tmp_path: Path) -> None:
    mesh = Mesh.with_free_ports(tmp_path, env={"BHIV_LOG_LEVEL": "loud"})
    with pytest.raises(MeshError, match="BHIV_LOG_LEVEL must be one of"):
        await mesh.start()
    assert mesh.procs == {}
    assert not mesh.log_dir.exists()


def test_the_edge_admits_the_message_size_the_services_accept(tmp_path: Path) -> None:
    mesh = Mesh.with_free_ports(tmp_path, env={"BHIV_MAX_MESSAGE_BYTES": str(8 * 1024 * 1024)})
    mesh.configs = mesh._load_configs(mesh.service_env())
    assert mesh.edge_settings().max_request_bytes == 8 * 1024 * 1024


def test_the_launcher_passes_its_settings_and_config_file_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bhiv.toml").write_text("crm_port = 6001\naccess_token_ttl_seconds = 60\n")
    environ = {"BHIV_CONFIG_FILE": "bhiv.toml", "BHIV_CRM_WORKERS": "2", "BHIV_DATA_DIR": "data"}
    mesh = _from_settings(Settings(environ), environ)
    env = mesh.service_env()
    assert env["BHIV_CONFIG_FILE"] == str(tmp_path / "bhiv.toml")  # the services read the file too
    assert env["BHIV_CRM_WORKERS"] == "2"
    assert env["BHIV_DATA_DIR"] == str(tmp_path / "data")
    assert (mesh.ports["crm"], env["BHIV_CRM_PORT"]) == (6001, "6001")
    assert Settings(env).positive_int("ACCESS_TOKEN_TTL_SECONDS", 900) == 60


def test_the_mesh_host_data_dir_and_ports_win_over_the_same_settings(tmp_path: Path) -> None:
    given = {"BHIV_HOST": "127.0.0.2", "BHIV_DATA_DIR": "/elsewhere", "BHIV_CRM_PORT": "1"}
    mesh = Mesh.with_free_ports(tmp_path, env={**given, "BHIV_LOG_LEVEL": "debug"})
    env = mesh.service_env()
    assert env["BHIV_HOST"] == "127.0.0.1"
    assert env["BHIV_DATA_DIR"] == str(tmp_path)
    assert env["BHIV_CRM_PORT"] == str(mesh.ports["crm"])
    assert env["BHIV_LOG_LEVEL"] == "debug"
