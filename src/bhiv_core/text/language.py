"""Language identification offline with ``py3langid`` (langid.py's naive Bayes model, in its wheel).

The model (about 4 MB, compressed) loads once, on first use, in about two seconds: call
:func:`detect` off the event loop. Probabilities are normalised, so ``confidence`` is the model's
posterior for the language it picks; a text with fewer than :data:`MIN_LETTERS` letters is not
judged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_INPUT_CHARS", "MIN_LETTERS", "Detection", "detect", "language_name"]

MAX_INPUT_CHARS = 20_000
"""The most characters the model reads (more changes nothing but the cost)."""

MIN_LETTERS = 3
"""The fewest letters a text needs to be judged."""

NAMES = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "az": "Azerbaijani", "be": "Belarusian",
    "bg": "Bulgarian", "bn": "Bengali", "bs": "Bosnian", "ca": "Catalan", "cs": "Czech", "cy": "Welsh",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "eo": "Esperanto", "es": "Spanish",
    "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish",
    "gl": "Galician", "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian",
    "hy": "Armenian", "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean", "la": "Latin",
    "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian",
    "mr": "Marathi", "ms": "Malay", "mt": "Maltese", "my": "Burmese", "ne": "Nepali", "nl": "Dutch",
    "no": "Norwegian", "or": "Odia", "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "sa": "Sanskrit", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian",
    "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek",
    "vi": "Vietnamese", "zh": "Chinese", "zu": "Zulu",
}  # fmt: skip
"""English names of the ISO 639-1 codes the model knows (others are shown as their code)."""


@dataclass(frozen=True, slots=True)
class Detection:
    """A language decision: ISO 639 code, English name, confidence 0-1, and the runners-up."""

    code: str
    name: str
    confidence: float
    alternatives: tuple[tuple[str, float], ...] = ()


_lock = threading.Lock()
_identifier: Any = None


def _model() -> Any:
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _identifier


def language_name(code: str) -> str:
    """The English name of ``code``, or the code itself."""
    return NAMES.get(code, code)


def detect(text: str) -> Detection | None:
    """The language of ``text``; None when it holds too few letters to judge. Blocking (CPU)."""
    sample = text[:MAX_INPUT_CHARS]
    if sum(ch.isalpha() for ch in sample) < MIN_LETTERS:
        return None
    ranked = _model().rank(sample)
    (code, probability), rest = ranked[0], ranked[1:4]
    return Detection(
        str(code),
        language_name(str(code)),
        round(float(probability), 4),
        tuple((str(c), round(float(p), 4)) for c, p in rest),
    )
