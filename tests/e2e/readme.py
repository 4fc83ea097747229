"""Running the README's command blocks as written against a real mesh (its edge, credentials, grpcurl)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bhiv_core.edge.binaries import find_tool
from bhiv_core.mesh import Mesh

__all__ = ["LOGIN", "README", "json_values", "readme_block", "run_as_written"]

README = Path(__file__).resolve().parents[2] / "README.md"

LOGIN = """PASSWORD=$(sed -n 's/^password=//p' .data/admin-credentials)
TOKEN=$(.tools/bin/grpcurl -plaintext -d "{\\"username\\": \\"admin\\", \\"password\\": \\"$PASSWORD\\"}" \\
  localhost:8080 bhiv.identity.v1.AuthService/Login \\
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"]["access_token"])')
"""
"""The README's admin login, for blocks that use ``$TOKEN`` without logging in themselves."""


def readme_block(marker: str) -> str:
    """The bash block between the README's ``<!-- {marker}:begin -->`` and ``:end`` markers."""
    text = README.read_text()
    block = text.split(f"<!-- {marker}:begin -->", 1)[1].split(f"<!-- {marker}:end -->", 1)[0]
    return block.strip().removeprefix("```bash").removesuffix("```")


def run_as_written(
    script: str,
    mesh: Mesh,
    *,
    files: Mapping[str, Path] | None = None,
    stop_on_error: bool = True,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Runs README commands against ``mesh``, the file names in ``files`` replaced by their paths.

    Args:
        script: The commands.
        mesh: The mesh whose edge, admin credentials and grpcurl replace the README's.
        files: README file name → the test's file.
        stop_on_error: ``bash -e``; off for walk-throughs that show refusals on purpose.
        timeout: Seconds for the whole script.

    """
    script = (
        script.replace("localhost:8080", mesh.edge_address)
        .replace(".data/admin-credentials", str(mesh.data_dir / "admin-credentials"))
        .replace(".tools/bin/grpcurl", str(find_tool("grpcurl")))
    )
    for name, path in (files or {}).items():
        script = script.replace(name, str(path))
    return subprocess.run(
        ["bash", "-eu" if stop_on_error else "-u", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=README.parent,
    )


def json_values(text: str) -> list[Any]:
    """Every JSON value printed one after another (grpcurl's replies), skipping other lines."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while (start := text.find("{", at)) != -1:
        try:
            value, at = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        values.append(value)
    return values
