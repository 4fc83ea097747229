"""The README's knowledge walk-through, run as written against a real mesh through the edge."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bhiv_core.mesh import Mesh
from tests.e2e.readme import json_values, readme_block, run_as_written
from tests.services.orchestration.pdf import pdf_of

pytestmark = pytest.mark.e2e


def test_the_readme_knowledge_walk_through_works_as_written(mesh: Mesh, tmp_path: Path) -> None:
    manual = tmp_path / "manual.pdf"
    manual.write_bytes(pdf_of(["Cardamom is stored in sealed tins in the cool room."]))
    done = run_as_written(
        readme_block("knowledge-examples"), mesh, files={"manual.pdf": manual}, stop_on_error=False
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
