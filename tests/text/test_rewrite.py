"""The offline rewrite: mechanical fixes only, each reported, idempotent."""

from __future__ import annotations

from bhiv_core.text.rewrite import clean_up


def test_mechanical_faults_are_fixed_and_reported() -> None:
    result = clean_up("i think  the the report is ready .it was hard,but we did it!!!  thanks..")
    assert result.text == "I think the report is ready. It was hard, but we did it! Thanks."
    described = result.describe()
    for change in ("removed 1 repeated word", "capitalised 3 sentence starts", "repeated punctuation mark"):
        assert change in described


def test_clean_text_is_unchanged_and_says_so() -> None:
    text = "The report is ready. It ships on Monday, as planned."
    result = clean_up(text)
    assert result.text == text and result.changes == {}
    assert result.describe() == "no mechanical fault found; the text is unchanged"


def test_it_is_idempotent() -> None:
    for text in ("hello  world . this is   fine,ok", "a\r\n\r\n\r\n\r\nb  c", "Wait... what?? really"):
        once = clean_up(text).text
        again = clean_up(once)
        assert again.text == once and again.changes == {}


def test_what_is_not_a_fault_is_kept() -> None:
    text = "Version 3.5 of example.com shipped, e.g. today... That that is is fine; he had had enough."
    assert clean_up(text).text == text


def test_blank_lines_and_spaces_are_collapsed() -> None:
    result = clean_up("One.\n\n\n\nTwo.   Three.\t Four.")
    assert result.text == "One.\n\nTwo. Three. Four."


def test_word_fixes_apply_to_english_only() -> None:
    assert clean_up("i libri sono qui e i quaderni anche.").text == "I libri sono qui e i quaderni anche."
    assert clean_up("Nous nous levons tôt.").text == "Nous nous levons tôt."
    assert clean_up("and i think that that the the plan works").text == "And I think that that the plan works"
