"""Extractive summaries: central sentences in order, length proportional, cost bounded by counts."""

from __future__ import annotations

import re

from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from bhiv_core.text.sentences import sentences
from bhiv_core.text.summarize import (
    MAX_ITERATIONS,
    MAX_SENTENCES,
    MAX_SUMMARY_SENTENCES,
    summarize,
    summary_length,
)

FERRY = (
    "The harbour ferry leaves the eastern pier every hour. "
    "Tickets for the harbour ferry are sold at the eastern pier kiosk. "
    "The lighthouse museum opens at nine. "
    "The harbour ferry carries bicycles for free on weekdays. "
    "On weekends the harbour ferry runs every half hour from the pier."
)


def test_sentences_are_verbatim_and_in_document_order() -> None:
    summary = summarize(FERRY, length=3)
    positions = [FERRY.index(s) for s in summary.sentences]
    assert positions == sorted(positions)
    assert len(summary.sentences) == 3


def test_the_off_topic_sentence_is_the_least_central() -> None:
    for length in (1, 2, 3, 4):
        assert "lighthouse" not in summarize(FERRY, length=length).text


def test_length_is_proportional_within_bounds() -> None:
    assert [summary_length(n) for n in (0, 1, 3, 4, 8, 20, 40, 1000)] == [0, 1, 1, 2, 2, 5, 10, 12]
    text = " ".join(f"Depot {i} shipped {i * 3} crates of tea to the coast." for i in range(40))
    assert len(summarize(text).sentences) == 10


def test_repeated_sentences_are_chosen_once() -> None:
    text = " ".join(["Karma yoga is acting without attachment to results."] * 6 + [FERRY])
    chosen = summarize(text, length=4).sentences
    assert len(chosen) == len(set(chosen))


def test_headings_and_line_breaks_do_not_leak_into_sentences() -> None:
    text = "# Title\n\nThe first line of the\nparagraph wraps here. Second sentence.\n\n## Next\n\nThird one."
    found = [s.text for s in sentences(text)]
    assert found == ["The first line of the\nparagraph wraps here.", "Second sentence.", "Third one."]
    assert "The first line of the paragraph wraps here." in summarize(text, length=3).sentences


def test_abbreviations_and_decimals_do_not_end_sentences() -> None:
    text = "Dr. Rao met Mr. J. Smith at 3.30 p.m. today. They agreed, e.g. on prices. Done!"
    assert [s.text for s in sentences(text)] == [
        "Dr. Rao met Mr. J. Smith at 3.30 p.m. today.",
        "They agreed, e.g. on prices.",
        "Done!",
    ]


def test_cost_is_bounded_on_100000_characters_and_does_not_grow_beyond() -> None:
    corpus = "\n\n".join(read_sample(s) for s in SAMPLES)
    big = (corpus * 10)[:100_000]
    bigger = (corpus * 40)[:400_000]
    first, second = summarize(big), summarize(bigger)
    assert first.total_sentences > MAX_SENTENCES  # the cap is exercised
    assert second.total_sentences > 3 * first.total_sentences
    for summary in (first, second):
        assert summary.scored_sentences == MAX_SENTENCES
        assert summary.pairs_compared == MAX_SENTENCES * (MAX_SENTENCES - 1) // 2
        assert 1 <= summary.iterations <= MAX_ITERATIONS
        assert len(summary.sentences) == MAX_SUMMARY_SENTENCES
    # The summary draws from across the document, not only its start.
    last_third = big[2 * len(big) // 3 :]
    assert any(s in last_third for s in first.sentences) or any(
        re.sub(r"\s+", " ", last_third).find(s) >= 0 for s in first.sentences
    )


def test_empty_and_tiny_inputs() -> None:
    assert summarize("").sentences == []
    assert summarize("Only one sentence here.").sentences == ["Only one sentence here."]
