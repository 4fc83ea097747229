"""The README's agent examples, run as written against a real mesh through the edge (offline)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bhiv_core.edge.binaries import find_tool
from bhiv_core.mesh import Mesh
from tests.e2e.test_agents import assert_verbatim_in_corpus, png_with_text, tone_wav
from tests.e2e.test_crm_readme import json_values
from tests.e2e.test_llm_readme import LOGIN

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def examples() -> str:
    """The bash block between the README's ``agent-examples`` markers, after a login."""
    text = README.read_text()
    block = text.split("<!-- agent-examples:begin -->", 1)[1].split("<!-- agent-examples:end -->", 1)[0]
    return LOGIN + block.strip().removeprefix("```bash").removesuffix("```")


def test_the_readme_agent_examples_work_through_the_edge(mesh: Mesh, tmp_path: Path) -> None:
    sign, clip = tmp_path / "sign.png", tmp_path / "clip.wav"
    sign.write_bytes(png_with_text("LOTUS 2026"))
    clip.write_bytes(tone_wav(1.5))
    script = (
        examples()
        .replace("localhost:8080", mesh.edge_address)
        .replace(".data/admin-credentials", str(mesh.data_dir / "admin-credentials"))
        .replace(".tools/bin/grpcurl", str(find_tool("grpcurl")))
        .replace("sign.png", str(sign))
        .replace("clip.wav", str(clip))
    )
    done = subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=README.parent,
    )
    assert done.returncode == 0, done.stderr
    assert not re.findall(r"Code: (\w+)", done.stderr), done.stderr
    asked, *rest = json_values(done.stdout)
    answer = asked["answer"]
    assert answer["agent"] == "agents/vedas"
    assert answer["sources"][0]["section"] == "Acting Without Attachment to Results"
    for source in answer["sources"]:
        assert_verbatim_in_corpus(source)
    assert "right to your work but never to its fruits" in answer["text"]

    # StreamAsk: routing, chunks, sources, done — then ListAgents, InvokeAgent, the two files.
    done_at = next(i for i, value in enumerate(rest) if "done" in value)
    events, (listed, planned, image, audio) = rest[: done_at + 1], rest[done_at + 1 :]
    assert "routing" in events[0] and "sources" in events[-2]
    assert events[0]["routing"]["agent"] in ("agents/knowledge", "agents/qna")
    streamed = "".join(event["chunk"]["text"] for event in events[1:-2])
    assert "14 days" in streamed
    assert len(listed["agents"]) == 12
    assert planned["answer"]["agent"] == "agents/planner" and planned["answer"]["confidence"] == 1
    assert image["answer"]["agent"] == "agents/image" and "LOTUS" in image["answer"]["text"].upper()
    assert audio["answer"]["agent"] == "agents/audio" and "1.5" in audio["answer"]["text"]
