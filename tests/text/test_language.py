"""Language identification offline with py3langid, on short sentences."""

from __future__ import annotations

import pytest

from bhiv_core.text.language import detect

SHORT = [
    ("en", "Where is the train station?"),
    ("fr", "Où est la gare, s'il vous plaît ?"),
    ("de", "Ich lese gern Bücher am Abend."),
    ("es", "¿Dónde está la estación de tren?"),
    ("it", "Grazie mille per il tuo aiuto."),
    ("pt", "Eu gosto de ler livros à noite."),
    ("nl", "Waar is het treinstation?"),
    ("hi", "रेलवे स्टेशन कहाँ है?"),
    ("ru", "Я люблю читать книги вечером."),
    ("ja", "夜に本を読むのが好きです。"),
    ("zh", "我喜欢晚上看书。"),
    ("ar", "أين محطة القطار؟"),
    ("sv", "Var ligger tågstationen?"),
    ("tr", "Tren istasyonu nerede?"),
]


@pytest.mark.parametrize(("code", "text"), SHORT)
def test_short_sentences_are_identified(code: str, text: str) -> None:
    found = detect(text)
    assert found is not None and found.code == code
    assert 0 < found.confidence <= 1


def test_names_and_alternatives() -> None:
    found = detect("Guten Morgen, wie geht es dir heute?")
    assert found is not None and found.name == "German"
    assert all(code != "de" for code, _ in found.alternatives)


def test_too_few_letters_is_no_decision() -> None:
    assert detect("12 + 3 = 15 !") is None
    assert detect("") is None
