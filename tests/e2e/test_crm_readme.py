"""The README's CRM walk-through, run as written against a real mesh through the edge."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bhiv_core.edge.binaries import find_tool
from bhiv_core.mesh import Mesh

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def walk_through() -> str:
    """The bash block between the README's ``crm-examples`` markers."""
    text = README.read_text()
    block = text.split("<!-- crm-examples:begin -->", 1)[1].split("<!-- crm-examples:end -->", 1)[0]
    return block.strip().removeprefix("```bash").removesuffix("```")


def test_the_readme_crm_walk_through_works_as_written(mesh: Mesh) -> None:
    script = (
        walk_through()
        .replace("localhost:8080", mesh.edge_address)
        .replace(".data/admin-credentials", str(mesh.data_dir / "admin-credentials"))
        .replace(".tools/bin/grpcurl", str(find_tool("grpcurl")))
    )
    done = subprocess.run(
        ["bash", "-u", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=README.parent,
    )
    # The refusals the walk-through shows, and nothing else.
    assert re.findall(r"Code: (\w+)", done.stderr) == [
        "AlreadyExists",
        "FailedPrecondition",
        "FailedPrecondition",
    ], done.stderr
    out = done.stdout
    assert '"status": "LEAD_STATUS_WON"' in out
    assert '"company": "TechStart Inc"' in out  # the customer made from the lead
    assert '"resolution": "Corrected the billing address"' in out
    assert '"notes": "नमस्ते — prefers e-mail 📧"' in out
    assert '"lastName": "O\'Brien"' in out or '"last_name": "O\'Brien"' in out
    # The customer's own account lists its tickets (the one support opened for it, and its own) and
    # one customer: itself.
    *_, own_ticket, own_tickets, own_customers = json_values(out)
    assert own_ticket["ticket"]["customer"] == own_customers["customers"][0]["name"]
    assert sorted(t["title"] for t in own_tickets["tickets"]) == [
        "Invoice shows the wrong address",
        "Where is my order?",
    ]
    assert [c["email"] for c in own_customers["customers"]] == ["sean.obrien@readme.example"]


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
