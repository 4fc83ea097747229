"""Keywords and key phrases of a text: a RAKE/YAKE-style scorer of our own, linear in the text.

Candidates are runs of one to three content words inside a sentence, broken at stop words,
numbers and punctuation (RAKE). Each word is scored from features in the spirit of YAKE: how often
it occurs, in how many sentences (spread), how early it first appears, and how often it is written
with a capital inside a sentence (a name). A phrase scores the mean of its words, times 1.5 for
each word past the first (RAKE's preference for specific phrases), times the square root of its own
frequency; a phrase that shares half its words with a better one is dropped. Work is one pass over at most
:data:`MAX_INPUT_WORDS` words.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bhiv_core.text.sentences import STOPWORDS, sentences

__all__ = ["MAX_INPUT_WORDS", "Keyword", "keywords"]

MAX_INPUT_WORDS = 100_000
"""The most words read from the input."""

MAX_PHRASE_WORDS = 3

_TOKEN = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*|\d+(?:[.,]\d+)*|[^\w\s]")


@dataclass(frozen=True, slots=True)
class Keyword:
    """A key phrase (lower case), its score (higher is better) and how often it occurs."""

    phrase: str
    score: float
    count: int


def _candidates(text: str) -> tuple[list[list[str]], list[list[str]], int]:
    """Candidate phrases per sentence (as word lists), the words as written, and the word count."""
    phrases: list[list[str]] = []
    written: list[list[str]] = []
    budget = MAX_INPUT_WORDS
    for sentence in sentences(text):
        if budget <= 0:
            break
        tokens = _TOKEN.findall(sentence.text)[:budget]
        budget -= len(tokens)
        written.append(tokens)
        run: list[str] = []
        for token in [*tokens, "."]:
            lower = token.lower().replace("’", "'")
            if not token[0].isalpha() or lower in STOPWORDS or len(lower) < 2:
                for size in range(1, MAX_PHRASE_WORDS + 1):
                    for start in range(0, len(run) - size + 1):
                        phrases.append(run[start : start + size])
                run = []
            else:
                run.append(lower)
    return phrases, written, MAX_INPUT_WORDS - budget


def keywords(text: str, *, limit: int = 10) -> list[Keyword]:
    """The ``limit`` best key phrases of ``text``, best first (lower case)."""
    phrases, written, total = _candidates(text)
    if not phrases:
        return []
    count: dict[str, int] = {}
    spread: dict[str, set[int]] = {}
    first: dict[str, int] = {}
    capitals: dict[str, int] = {}
    position = 0
    for index, tokens in enumerate(written):
        for offset, token in enumerate(tokens):
            lower = token.lower().replace("’", "'")
            if not token[0].isalpha() or lower in STOPWORDS:
                continue
            count[lower] = count.get(lower, 0) + 1
            spread.setdefault(lower, set()).add(index)
            first.setdefault(lower, position + offset)
            if offset > 0 and token[0].isupper():
                capitals[lower] = capitals.get(lower, 0) + 1
        position += len(tokens)
    sentences_seen = max(1, len(written))
    largest = max(count.values())
    word_score: dict[str, float] = {}
    for word, n in count.items():
        frequency = n / largest
        reach = len(spread[word]) / sentences_seen
        early = 1.0 / math.log(3 + first[word] / max(1, total) * 50)
        named = 1.0 + capitals.get(word, 0) / n
        word_score[word] = (0.5 + frequency + reach) * early * named * min(1.0, len(word) / 4)
    phrase_count: dict[tuple[str, ...], int] = {}
    for phrase in phrases:
        key = tuple(phrase)
        phrase_count[key] = phrase_count.get(key, 0) + 1
    scored = []
    for key, n in phrase_count.items():
        mean = sum(word_score[w] for w in key) / len(key)
        scored.append((mean * (1.0 + 0.5 * (len(key) - 1)) * math.sqrt(n), n, key))
    scored.sort(key=lambda item: (-item[0], item[2]))
    chosen: list[Keyword] = []
    covered: list[set[str]] = []
    for score, n, key in scored:
        words = set(key)
        if any(2 * len(words & seen) >= len(words) or seen <= words for seen in covered):
            continue
        covered.append(words)
        chosen.append(Keyword(" ".join(key), round(score, 4), n))
        if len(chosen) >= limit:
            break
    return chosen
