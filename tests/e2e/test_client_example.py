"""The README's client (examples/client.py), run by a consumer's venv against the real edge.

The venv holds only ``bhiv-core-contracts`` and its declared dependencies, so this also proves the
distribution is enough to call BHIV Core.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bhiv_core.mesh import Mesh
from tests.e2e.client import admin_credentials
from tests.packaging.venvs import ROOT, clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLE = ROOT / "examples" / "client.py"


async def test_readme_client_logs_in_lists_users_and_reads_error_details_through_the_edge(
    mesh: Mesh, contracts_python: Path, tmp_path: Path
) -> None:
    username, password = admin_credentials(mesh)
    proc = await asyncio.create_subprocess_exec(
        str(contracts_python),
        str(EXAMPLE),
        mesh.edge_address,
        username,
        cwd=tmp_path,
        env=clean_env(BHIV_PASSWORD=password),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    users, error, *details = out.decode().splitlines()
    # Logged in, and the token was accepted: ListUsers answered with at least the admin.
    assert users.startswith("users: ") and username in users.removeprefix("users: ").split(", ")
    # The refused call's code and its google.rpc details, decoded from the trailer.
    assert error.startswith("error: INVALID_ARGUMENT ")
    assert "  reason: INVALID_ARGUMENT domain: identity.bhiv.core" in details
    assert any(line.startswith("  field: page_size - ") for line in details), details
