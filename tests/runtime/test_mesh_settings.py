"""The launcher reads the services' settings as they will: bad ones fail first, shared ones agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from bhiv_core.mesh import Mesh, MeshError, _from_settings
from bhiv_core.runtime.config import ConfigError, Settings


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


def test_edge_replicas_listen_on_the_edge_and_admin_ports_plus_their_number(tmp_path: Path) -> None:
    environ = {"BHIV_EDGE_REPLICAS": "3", "BHIV_EDGE_PORT": "18080", "BHIV_EDGE_ADMIN_PORT": "19901"}
    mesh = _from_settings(Settings(environ), environ)
    assert mesh.edge_replica_ports == [(18081, 19902), (18082, 19903)]
    assert mesh.edge_addresses == ["127.0.0.1:18080", "127.0.0.1:18081", "127.0.0.1:18082"]
    mesh.configs = mesh._load_configs(mesh.service_env())
    replicas = [mesh.edge_settings(i) for i in range(3)]
    assert [(r.listen_port, r.admin_port, r.node_id) for r in replicas] == [
        (18080, 19901, "bhiv-edge"),
        (18081, 19902, "bhiv-edge-1"),
        (18082, 19903, "bhiv-edge-2"),
    ]
    assert len({str(r.access_log_path) for r in replicas}) == 3


def test_one_edge_replica_by_default(tmp_path: Path) -> None:
    mesh = _from_settings(Settings({}), {})
    assert (mesh.edge_replica_ports, mesh.edge_addresses) == ([], ["127.0.0.1:8080"])


@pytest.mark.parametrize("replicas", ["0", "two"])
def test_a_bad_replica_count_is_a_configuration_error(replicas: str) -> None:
    environ = {"BHIV_EDGE_REPLICAS": replicas}
    with pytest.raises(ConfigError, match="BHIV_EDGE_REPLICAS"):
        _from_settings(Settings(environ), environ)
