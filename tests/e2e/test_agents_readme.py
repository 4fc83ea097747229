"""The README's agent examples, run as written against a real mesh through the edge (offline)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bhiv_core.mesh import Mesh
from tests.e2e.launcher import start_launcher, stop_launcher
from tests.e2e.readme import LOGIN, README, json_values, readme_block, run_as_written
from tests.e2e.test_agents import assert_verbatim_in_corpus, png_with_text, tone_wav

pytestmark = pytest.mark.e2e


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
        done = run_as_written(timed, launcher.mesh, timeout=300)
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
    done = run_as_written(
        LOGIN + readme_block("agent-examples"), mesh, files={"sign.png": sign, "clip.wav": clip}, timeout=300
    )
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
