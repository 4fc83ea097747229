"""The README's CRM walk-through, run as written against a real mesh through the edge."""

from __future__ import annotations

import re

import pytest

from bhiv_core.mesh import Mesh
from tests.e2e.readme import json_values, readme_block, run_as_written

pytestmark = pytest.mark.e2e


def test_the_readme_crm_walk_through_works_as_written(mesh: Mesh) -> None:
    done = run_as_written(readme_block("crm-examples"), mesh, stop_on_error=False)
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
