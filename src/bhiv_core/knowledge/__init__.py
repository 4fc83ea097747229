"""The knowledge base as a library: extraction, chunking and BM25 retrieval with source spans.

The orchestration service's ``KnowledgeService`` is a thin layer over it, and the agents retrieve
through the same API. The pieces:

- :func:`~bhiv_core.knowledge.extract.extract_text` / :func:`~bhiv_core.knowledge.extract.extract_pdf`
  turn content into an :class:`~bhiv_core.knowledge.extract.Extracted` (the document's extracted
  text and its sections: Markdown headings, or ``Page N`` for a PDF); bad content is
  INVALID_ARGUMENT.
- :func:`~bhiv_core.knowledge.chunking.chunk` splits the text into passages (spans of at most 900
  characters, cut at paragraph, sentence or word boundaries) in linear time.
- :class:`~bhiv_core.knowledge.index.KnowledgeIndex` keeps the passages in SQLite FTS5 (the
  embedded default; :class:`~bhiv_core.knowledge.index.mongo.MongoKnowledgeIndex` keeps them in
  MongoDB with a ``$text`` index, both behind :class:`~bhiv_core.knowledge.index.PassageIndex`,
  chosen by :func:`~bhiv_core.knowledge.index.make_knowledge_index`) and searches them::

      passages = await index.search("acting without attachment to results", tags=["gita"], limit=5)
      for p in passages:
          p.id            # "documents/abc#3": stable
          p.document, p.document_title, p.section
          p.span_start, p.span_end   # extracted_text[span_start:span_end] == p.text
          p.score         # 0-1, higher is more relevant (BM25)

  Every passage returned is verbatim text of an ingested document, so an answer citing it cites a
  real source; no match returns an empty list (never an invented source).
- :mod:`bhiv_core.knowledge.corpus` is the sample corpus ingested on first start.

- :func:`~bhiv_core.knowledge.dense.load_embedder` loads the offline ``wordllama`` model; an
  index given it searches **hybrid** (BM25 and dense cosine fused by reciprocal rank); without it,
  BM25 alone. ``search(..., mode="bm25" | "dense" | "hybrid")`` picks one ranking.
"""

from bhiv_core.knowledge.chunking import Chunk, Section, chunk
from bhiv_core.knowledge.dense import Embedder, load_embedder
from bhiv_core.knowledge.extract import Extracted, extract_pdf, extract_text
from bhiv_core.knowledge.index import KnowledgeIndex, Passage, PassageIndex, make_knowledge_index

__all__ = [
    "Chunk",
    "Embedder",
    "Extracted",
    "KnowledgeIndex",
    "Passage",
    "PassageIndex",
    "Section",
    "chunk",
    "extract_pdf",
    "extract_text",
    "load_embedder",
    "make_knowledge_index",
]
