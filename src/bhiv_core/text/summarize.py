"""Extractive summaries: TextRank over TF-IDF sentence vectors, sentences kept in document order.

Cost is bounded whatever the input: at most :data:`MAX_SENTENCES` sentences are scored (spread
evenly over a longer document), each by at most :data:`MAX_TERMS_PER_SENTENCE` distinct words, so the
similarity matrix is at most 240 × 240 and the power iteration at most :data:`MAX_ITERATIONS` rounds
of it. Segmentation itself is one linear pass over at most :data:`MAX_INPUT_CHARS` characters.
:class:`Summary` reports the work done (sentences scored, pairs compared) so tests can hold it to
these bounds by count rather than by time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from bhiv_core.text.sentences import Sentence, content_words, sentences

__all__ = [
    "MAX_INPUT_CHARS",
    "MAX_ITERATIONS",
    "MAX_SENTENCES",
    "MAX_SUMMARY_SENTENCES",
    "MAX_TERMS_PER_SENTENCE",
    "Summary",
    "summarize",
    "summary_length",
]

MAX_INPUT_CHARS = 2_000_000
"""The most characters read from the input (the rest is not summarised)."""

MAX_SENTENCES = 240
"""The most sentences scored; a longer text is sampled evenly from start to end."""

MAX_TERMS_PER_SENTENCE = 48
"""The most distinct words of a sentence that count towards its similarity to others."""

MAX_ITERATIONS = 60
"""The most rounds of the PageRank power iteration."""

MAX_SUMMARY_SENTENCES = 12
"""The longest summary, in sentences."""

MAX_SUMMARY_CHARS = 2400
"""The longest summary, in characters (at least one sentence is always kept)."""

DAMPING = 0.85
REDUNDANT = 0.75
"""The cosine similarity above which a sentence repeats one already chosen."""
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Summary:
    """An extractive summary and the work spent on it.

    Attributes:
        sentences: The chosen sentences (white space collapsed), in document order.
        total_sentences: How many sentences the input holds (up to :data:`MAX_INPUT_CHARS`).
        scored_sentences: How many were scored (at most :data:`MAX_SENTENCES`).
        pairs_compared: Sentence pairs whose similarity was computed (at most scored²).
        iterations: Power-iteration rounds run.

    """

    sentences: list[str]
    total_sentences: int
    scored_sentences: int
    pairs_compared: int
    iterations: int

    @property
    def text(self) -> str:
        """The summary as one paragraph."""
        return " ".join(self.sentences)


def summary_length(total: int) -> int:
    """How many sentences summarise ``total``: about a quarter, at least 1 (2 from 4), at most 12."""
    if total <= 3:
        return 1 if total else 0
    return max(2, min(MAX_SUMMARY_SENTENCES, math.ceil(total * 0.25)))


def _sample(found: list[Sentence], limit: int) -> list[Sentence]:
    if len(found) <= limit:
        return found
    step = len(found) / limit
    return [found[int(i * step)] for i in range(limit)]


def _textrank(vectors: list[dict[str, float]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of sentences by PageRank over their cosine-similarity graph, the graph, and the rounds."""
    n = len(vectors)
    vocabulary: dict[str, int] = {}
    for vector in vectors:
        for term in vector:
            vocabulary.setdefault(term, len(vocabulary))
    matrix = np.zeros((n, max(1, len(vocabulary))), dtype=np.float32)
    for row, vector in enumerate(vectors):
        for term, weight in vector.items():
            matrix[row, vocabulary[term]] = weight
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix /= np.where(norms == 0, 1, norms)
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, 0.0)
    out = similarity.sum(axis=1, keepdims=True)
    transition = np.divide(similarity, out, out=np.zeros_like(similarity), where=out > 0)
    scores = np.full(n, 1.0 / n, dtype=np.float64)
    rounds = 0
    for rounds in range(1, MAX_ITERATIONS + 1):  # noqa: B007 - rounds is reported
        updated = (1 - DAMPING) / n + DAMPING * (transition.T @ scores)
        done = float(np.abs(updated - scores).sum()) < 1e-6
        scores = updated
        if done:
            break
    return scores, similarity, rounds


def summarize(text: str, *, length: int | None = None) -> Summary:
    """The most central sentences of ``text``, in their original order.

    Args:
        text: The text to summarise.
        length: How many sentences to keep; None: :func:`summary_length` of the sentence count.

    """
    found = sentences(text[:MAX_INPUT_CHARS])
    wanted = summary_length(len(found)) if length is None else max(0, min(length, len(found)))
    if not found or wanted == 0:
        return Summary([], len(found), 0, 0, 0)
    scored = _sample(found, MAX_SENTENCES)
    terms = [list(dict.fromkeys(content_words(s.text)))[:MAX_TERMS_PER_SENTENCE] for s in scored]
    frequency: dict[str, int] = {}
    for sentence_terms in terms:
        for term in sentence_terms:
            frequency[term] = frequency.get(term, 0) + 1
    n = len(scored)
    vectors = [{t: 1.0 + math.log(n / frequency[t]) for t in sentence_terms} for sentence_terms in terms]
    if n == 1:
        scores, similarity, rounds = np.ones(1), np.zeros((1, 1)), 0
    else:
        scores, similarity, rounds = _textrank(vectors)
    pairs = n * (n - 1) // 2
    # Very short fragments (headings, list stubs) read badly out of context: ranked last.
    adjusted = [(float(scores[i]) * (1.0 if len(terms[i]) >= 3 else 0.1), -i) for i in range(n)]
    ranked = sorted(range(n), key=lambda i: adjusted[i], reverse=True)
    chosen: list[int] = []
    size = 0
    for i in ranked:
        if len(chosen) >= wanted:
            break
        sentence_size = len(scored[i].text)
        if chosen and size + sentence_size > MAX_SUMMARY_CHARS:
            continue
        # A near-repeat of a chosen sentence adds nothing.
        if any(similarity[i, j] > REDUNDANT for j in chosen):
            continue
        chosen.append(i)
        size += sentence_size + 1
    return Summary([_SPACE.sub(" ", scored[i].text) for i in sorted(chosen)], len(found), n, pairs, rounds)
