"""The knowledge bench's corpus: deterministic, exactly the passages it claims, queries that match."""

from __future__ import annotations

from collections import Counter

from bench.knowledge import generate_corpus
from bhiv_core.knowledge import chunk, extract_text


def test_the_corpus_is_deterministic_and_chunks_into_its_passage_count() -> None:
    corpus = generate_corpus(passages=260, seed=3)
    assert corpus == generate_corpus(passages=260, seed=3)
    assert corpus != generate_corpus(passages=260, seed=4)
    counted = 0
    for _, text, _ in corpus.documents:
        extracted = extract_text(text, field="text")
        counted += len(chunk(extracted.text, extracted.sections))
    assert counted == corpus.passages == 260


def test_words_are_zipf_like_and_queries_are_words_of_the_corpus() -> None:
    corpus = generate_corpus(passages=500, seed=3)
    words = Counter(
        w for _, text, _ in corpus.documents for w in text.lower().replace(".", " ").split() if w != "#"
    )
    counts = sorted(words.values(), reverse=True)
    assert len(words) > 3000  # a long tail, not a handful of words
    assert counts[0] > 20 * counts[len(counts) // 2]  # a few very common words
    for query in corpus.queries:
        assert 2 <= len(query.split()) <= 5
        assert all(word in words for word in query.split())
