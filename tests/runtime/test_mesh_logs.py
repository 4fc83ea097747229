"""Where the mesh's services log: their own rotating files, and what they print before logging starts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bhiv_core.mesh import Mesh, MeshError


def test_services_are_told_to_log_into_the_mesh_log_folder(tmp_path: Path) -> None:
    mesh = Mesh.with_free_ports(tmp_path)
    assert mesh.service_env()["BHIV_LOG_DIR"] == str(tmp_path / "logs")


async def test_a_service_failing_before_its_logging_starts_is_reported_with_what_it_printed(
    tmp_path: Path,
) -> None:
    # The launcher checks every setting before it starts anything; what only the service meets is
    # its log file: a folder where crm's log should be stops crm before its logging exists.
    (tmp_path / "logs" / "crm.log").mkdir(parents=True)
    mesh = Mesh.with_free_ports(tmp_path, startup_timeout=120)
    with pytest.raises(MeshError, match=r"^crm exited with 2:\n--- crm\.stderr\.log\n") as failed:
        await mesh.start()
    assert "configuration error: BHIV_LOG_DIR=" in str(failed.value)
    assert mesh.procs == {}
    stderr = tmp_path / "logs" / "crm.stderr.log"
    assert stat.S_IMODE(stderr.stat().st_mode) == 0o600


async def test_edge_peers_leaving_out_the_mesh_edge_are_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    mesh = Mesh.with_free_ports(tmp_path, env={"BHIV_EDGE_PEERS": "10.0.0.0/8"})
    with pytest.raises(MeshError, match=r"BHIV_EDGE_PEERS \(10.0.0.0/8\) leaves out 127.0.0.2"):
        await mesh.start()
    assert mesh.procs == {}
    loopback = Mesh.with_free_ports(tmp_path, env={"BHIV_EDGE_PEERS": "127.0.0.0/8"})
    loopback._check_edge_trusted(loopback._load_configs(loopback.service_env()))  # 127.0.0.2 is in it


async def test_a_data_directory_that_cannot_be_made_private_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the data directory should be")
    mesh = Mesh.with_free_ports(tmp_path / "data")
    with pytest.raises(MeshError, match=r"data directory .* cannot be made private: .* not a folder"):
        await mesh.start()
    assert mesh.procs == {}
