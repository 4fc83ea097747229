"""The README's LLM examples, run as written against a real mesh through the edge (offline)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bhiv_core.edge.binaries import find_tool
from bhiv_core.mesh import Mesh
from tests.e2e.test_crm_readme import json_values

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
LOGIN = """PASSWORD=$(sed -n 's/^password=//p' .data/admin-credentials)
TOKEN=$(.tools/bin/grpcurl -plaintext -d "{\\"username\\": \\"admin\\", \\"password\\": \\"$PASSWORD\\"}" \\
  localhost:8080 bhiv.identity.v1.AuthService/Login \\
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"]["access_token"])')
"""


def examples() -> str:
    """The bash block between the README's ``llm-examples`` markers, after a login."""
    text = README.read_text()
    block = text.split("<!-- llm-examples:begin -->", 1)[1].split("<!-- llm-examples:end -->", 1)[0]
    return LOGIN + block.strip().removeprefix("```bash").removesuffix("```")


def test_the_readme_llm_examples_work_through_the_edge(mesh: Mesh) -> None:
    script = (
        examples()
        .replace("localhost:8080", mesh.edge_address)
        .replace(".data/admin-credentials", str(mesh.data_dir / "admin-credentials"))
        .replace(".tools/bin/grpcurl", str(find_tool("grpcurl")))
    )
    done = subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=README.parent,
    )
    assert done.returncode == 0, done.stderr
    assert not re.findall(r"Code: (\w+)", done.stderr), done.stderr
    models, completion, *events = json_values(done.stdout)
    assert models["models"][0]["name"] == "models/local-extractive"
    reply = completion["completion"]
    assert reply["message"]["content"] == "Refunds are paid within 14 days of receiving the returned item."
    assert reply["model"] == "models/local-extractive"
    assert reply["provider"] == "PROVIDER_LOCAL_EXTRACTIVE"
    deltas = "".join(e["delta"]["content"] for e in events[:-1])
    assert (
        deltas == events[-1]["completion"]["message"]["content"] == "Support is open from 9:00 to 17:00 UTC."
    )
