"""Separating the instruction from the payload, and reading the text operation asked."""

from __future__ import annotations

import re

import pytest

from bhiv_core.text.instructions import split_instruction, target_language, text_operation

VERBS = re.compile(r"\b(?:translat\w*|extract\w*|keywords?|rewrite|language|summari[sz]e)\b", re.I)


@pytest.mark.parametrize(
    ("query", "instruction", "payload"),
    [
        ("Translate to French: Good morning, friends", "Translate to French", "Good morning, friends"),
        ('Translate "Good morning" into Spanish', "Translate  into Spanish", "Good morning"),
        (
            "Extract the keywords - the monsoon trucks leave",
            "Extract the keywords",
            "the monsoon trucks leave",
        ),
        ("What language is this? Dónde está la estación", "What language is this", "Dónde está la estación"),
        (
            "Summarize the following text the cat sat on the mat",
            "Summarize the following text",
            "the cat sat on the mat",
        ),
        ("Summarize:", "Summarize", ""),
        ("The cat sat on the mat.", "", "The cat sat on the mat."),
        ("Note: the cat sat", "", "Note: the cat sat"),  # a colon without an instruction verb
    ],
)
def test_split(query: str, instruction: str, payload: str) -> None:
    split = split_instruction(query, VERBS)
    assert (split.instruction, split.payload) == (instruction, payload)


@pytest.mark.parametrize(
    ("instruction", "operation"),
    [
        ("Translate to French", "translate"),
        ("Put this into German", "translate"),
        ("What language is this", "detect_language"),
        ("Identify the language", "detect_language"),
        ("Extract the keywords", "extract_keywords"),
        ("Give me hashtags", "extract_keywords"),
        ("Proofread and clean up", "rewrite"),
        ("Rephrase it politely", "rewrite"),
        ("Hello there", None),
    ],
)
def test_operations(instruction: str, operation: str | None) -> None:
    assert text_operation(instruction) == operation


def test_target_language() -> None:
    assert target_language("Translate to french") == "French"
    assert target_language("translate this into Hindi please") == "Hindi"
    assert target_language("Translate this") is None
