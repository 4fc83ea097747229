"""The mesh refuses to start on ports that are taken or given twice, before starting anything."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from bhiv_core.mesh import Mesh, MeshError


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    mesh = Mesh.with_free_ports(tmp_path)
    with socket.socket() as taken:
        taken.bind((mesh.host, mesh.ports["crm"]))
        taken.listen()
        with pytest.raises(MeshError, match=rf"port {mesh.ports['crm']} \(BHIV_CRM_PORT\) .* already in use"):
            mesh._check_ports()
    mesh._check_ports()  # free again


def test_one_port_given_twice_is_refused(tmp_path: Path) -> None:
    mesh = Mesh.with_free_ports(tmp_path)
    twice = replace(mesh, edge_port=mesh.admin_port)
    with pytest.raises(MeshError, match="are both"):
        twice._check_ports()


def test_a_taken_edge_replica_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    mesh = Mesh.with_free_ports(tmp_path, edge_replicas=2)
    (port, admin) = mesh.edge_replica_ports[0]
    with socket.socket() as taken:
        taken.bind((mesh.host, admin))
        taken.listen()
        with pytest.raises(MeshError, match=rf"port {admin} \(edge replica 1 admin\) .* already in use"):
            mesh._check_ports()
    twice = replace(mesh, edge_replica_ports=[(port, admin), (port, admin + 1)])
    with pytest.raises(MeshError, match="are both"):
        twice._check_ports()
