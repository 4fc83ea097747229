"""The README's knowledge walk-through, run as written against a real mesh through the edge."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bhiv_core.edge.binaries import find_tool
from bhiv_core.mesh import Mesh
from tests.e2e.test_crm_readme import json_values
from tests.services.orchestration.pdf import pdf_of

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def walk_through() -> str:
    """The bash block between the README's ``knowledge-examples`` markers."""
    text = README.read_text()
    block = text.split("<!-- knowledge-examples:begin -->", 1)[1].split("<!-- knowledge-examples:end -->", 1)[
        0
    ]
    return block.strip().removeprefix("```bash").removesuffix("```")


def test_the_readme_knowledge_walk_through_works_as_written(mesh: Mesh, tmp_path: Path) -> None:
    manual = tmp_path / "manual.pdf"
    manual.write_bytes(pdf_of(["Cardamom is stored in sealed tins in the cool room."]))
    script = (
        walk_through()
        .replace("localhost:8080", mesh.edge_address)
        .replace(".data/admin-credentials", str(mesh.data_dir / "admin-credentials"))
        .replace(".tools/bin/grpcurl", str(find_tool("grpcurl")))
        .replace("manual.pdf", str(manual))
    )
    done = subprocess.run(
        ["bash", "-u", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=README.parent,
    )
    # The one refusal the walk-through shows: the bytes that are not a PDF.
    assert re.findall(r"Code: (\w+)", done.stderr) == ["InvalidArgument"], done.stderr
    assert "NOT_PDF" in done.stderr
    gita, refund, listed, pdf, trucks, deleted = json_values(done.stdout)  # the ingest's goes to NAME
    top = gita["passages"][0]
    assert top["document_title"] == "The Bhagavad Gita on Action"
    assert top["section"] == "Acting Without Attachment to Results"
    assert "right to your work but never to its fruits" in top["text"]
    assert refund["passages"][0]["section"] == "Refund Policy"
    assert len(listed["documents"]) == 2 and listed["next_page_token"]
    assert pdf["document"]["mime_type"] == "application/pdf"
    assert trucks["passages"][0]["text"] == "The monsoon trucks leave the north dock at 2 am."
    assert deleted == {}
