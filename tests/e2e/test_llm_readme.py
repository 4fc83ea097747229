"""The README's LLM examples, run as written against a real mesh through the edge (offline)."""

from __future__ import annotations

import re

import pytest

from bhiv_core.mesh import Mesh
from tests.e2e.readme import LOGIN, json_values, readme_block, run_as_written

pytestmark = pytest.mark.e2e


def test_the_readme_llm_examples_work_through_the_edge(mesh: Mesh) -> None:
    done = run_as_written(LOGIN + readme_block("llm-examples"), mesh, timeout=120)
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
