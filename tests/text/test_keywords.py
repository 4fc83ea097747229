"""Key phrases: content words and phrases, ranked, without stop words or repeats."""

from __future__ import annotations

from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from bhiv_core.text.keywords import MAX_INPUT_WORDS, keywords
from bhiv_core.text.sentences import STOPWORDS


def phrases(text: str, limit: int = 10) -> list[str]:
    return [k.phrase for k in keywords(text, limit=limit)]


def test_phrases_break_at_stop_words() -> None:
    assert phrases("the monsoon trucks leave the north dock at night") == [
        "monsoon trucks leave",
        "north dock",
        "night",
    ]


def test_each_sample_document_is_led_by_its_subject() -> None:
    expected = {
        "vedic-concepts.md": "vedic",
        "gita-on-action.md": "gita",
        "ayurveda-doshas.md": "ayurveda",
        "yoga-basics.md": "yoga",
        "study-skills.md": "memory",
        "platform-policies.md": "refund",
    }
    for sample in SAMPLES:
        top = " ".join(phrases(read_sample(sample), limit=8))
        assert expected[sample.file] in top, (sample.file, top)


def test_no_stop_word_and_no_overlapping_repeat() -> None:
    text = " ".join(read_sample(s) for s in SAMPLES)
    found = phrases(text, limit=20)
    assert len(found) == 20
    for phrase in found:
        assert not set(phrase.split()) & STOPWORDS
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            assert not set(a.split()) <= set(b.split()), (a, b)


def test_work_is_capped_at_the_word_limit() -> None:
    tail = " zebra" * 1000
    text = "alpha beta gamma. " * (MAX_INPUT_WORDS // 3 + 10) + tail
    assert "zebra" not in phrases(text)  # words past the cap are never read


def test_nothing_to_extract() -> None:
    assert keywords("") == []
    assert keywords("the and of to 42") == []
