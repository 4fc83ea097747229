"""Chunking: spans are verbatim, bounded, ordered, and inside their sections."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bhiv_core.knowledge.chunking import MAX_PASSAGE_CHARS, chunk, markdown_sections
from bhiv_core.knowledge.extract import extract_text


def test_markdown_headings_are_sections_and_their_lines_are_not_passages() -> None:
    text = "Intro line.\n\n# First\n\nAlpha text.\n\n## Second ##\nBeta text.\n"
    sections = markdown_sections(text)
    assert [s.title for s in sections] == ["", "First", "Second"]
    chunks = chunk(text, sections)
    assert [(c.section, text[c.start : c.end]) for c in chunks] == [
        ("", "Intro line."),
        ("First", "Alpha text."),
        ("Second", "Beta text."),
    ]


def test_a_long_paragraph_is_cut_at_sentence_ends_within_the_limit() -> None:
    sentence = "The river carries silt to the delta every monsoon season. "
    text = sentence * 100
    chunks = chunk(text, markdown_sections(text))
    assert len(chunks) > 1
    for c in chunks:
        assert 0 < c.end - c.start <= MAX_PASSAGE_CHARS
        assert text[c.start : c.end].endswith(".")


def test_a_text_with_no_spaces_is_still_cut() -> None:
    text = "x" * (MAX_PASSAGE_CHARS * 3 + 7)
    chunks = chunk(text, markdown_sections(text))
    assert "".join(text[c.start : c.end] for c in chunks) == text
    assert max(c.end - c.start for c in chunks) <= MAX_PASSAGE_CHARS


@given(st.text(alphabet=st.sampled_from("ab .\n#\t"), max_size=3000))
def test_spans_are_ordered_bounded_trimmed_and_inside_their_sections(text: str) -> None:
    if not text.strip():
        return
    extracted = extract_text(text, field="text")
    chunks = chunk(extracted.text, extracted.sections)
    end = 0
    for c in chunks:
        piece = text[c.start : c.end]
        assert c.start >= end and 0 < len(piece) <= MAX_PASSAGE_CHARS
        assert piece == piece.strip()
        assert any(s.start <= c.start and c.end <= s.end and s.title == c.section for s in extracted.sections)
        end = c.end
