"""The README's agent examples, run as written against a real mesh through the edge (offline)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bhiv_core.edge.binaries import find_tool
from bhiv_core.mesh import Mesh
from tests.e2e.launcher import start_launcher, stop_launcher
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


def run_as_written(script: str, mesh: Mesh, files: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """Runs README commands against ``mesh`` (its edge, credentials and grpcurl), files renamed."""
    script = (
        script.replace("localhost:8080", mesh.edge_address)
        .replace(".data/admin-credentials", str(mesh.data_dir / "admin-credentials"))
        .replace(".tools/bin/grpcurl", str(find_tool("grpcurl")))
    )
    for name, path in files.items():
        script = script.replace(name, str(path))
    return subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=README.parent,
    )


def assert_the_gita_answer(answer: dict[str, Any]) -> None:
    """What the README promises for the newcomer's question: vedas, grounded in the Gita document."""
    assert answer["agent"] == "agents/vedas"
    assert answer["intent"] == "vedic_knowledge"
    assert answer["sources"][0]["section"] == "Acting Without Attachment to Results"
    for source in answer["sources"]:
        assert_verbatim_in_corpus(source)
    assert "right to your work but never to its fruits" in answer["text"]


def try_it_ask() -> str:
    """The Ask of the README's "Try it" section: its comment and command, up to the blank line."""
    text = README.read_text()
    start = text.index("# Ask the agents: routed")
    return text[start : text.index("\n\n", start)]


def test_a_newcomer_running_make_run_gets_a_grounded_answer_to_the_gita_question(tmp_path: Path) -> None:
    """``make run``'s launcher on an empty data directory, then the README's login and its Ask."""
    launcher = start_launcher(tmp_path / "data", {})
    children = launcher.children()
    try:
        # The Ask alone is timed (grpcurl's own start included), apart from the login's scrypt.
        timed = f'{LOGIN}started=$(date +%s.%N)\n{try_it_ask()}\necho "ask: $started $(date +%s.%N)" >&2'
        done = run_as_written(timed, launcher.mesh, {})
    finally:
        stop_launcher(launcher, children)
    assert done.returncode == 0, done.stderr
    begin, end = map(float, re.findall(r"ask: (\S+) (\S+)", done.stderr)[0])
    print(f"\nfirst Ask on a fresh `make run` (grpcurl through the edge, offline): {end - begin:.2f} s")
    (asked,) = json_values(done.stdout)
    assert_the_gita_answer(asked["answer"])


def test_the_readme_agent_examples_work_through_the_edge(mesh: Mesh, tmp_path: Path) -> None:
    sign, clip = tmp_path / "sign.png", tmp_path / "clip.wav"
    sign.write_bytes(png_with_text("LOTUS 2026"))
    clip.write_bytes(tone_wav(1.5))
    done = run_as_written(examples(), mesh, {"sign.png": sign, "clip.wav": clip})
    assert done.returncode == 0, done.stderr
    assert not re.findall(r"Code: (\w+)", done.stderr), done.stderr
    asked, *rest = json_values(done.stdout)
    assert_the_gita_answer(asked["answer"])

    # StreamAsk: routing, chunks, sources, done — then ListAgents, InvokeAgent, the two files.
    done_at = next(i for i, value in enumerate(rest) if "done" in value)
    events, (listed, planned, image, audio) = rest[: done_at + 1], rest[done_at + 1 :]
    assert "routing" in events[0] and "sources" in events[-2]
    assert events[0]["routing"]["agent"] in ("agents/knowledge", "agents/qna")
    streamed = "".join(event["chunk"]["text"] for event in events[1:-2])
    assert "5 to 7 business days" in streamed
    assert events[-2]["sources"]["sources"][0]["section"] == "Refund Policy"
    assert len(listed["agents"]) == 12
    assert planned["answer"]["agent"] == "agents/planner" and planned["answer"]["confidence"] == 1
    assert image["answer"]["agent"] == "agents/image" and "LOTUS" in image["answer"]["text"].upper()
    assert audio["answer"]["agent"] == "agents/audio" and "1.5 seconds" in audio["answer"]["text"]
