"""Dense embeddings with ``wordllama``, whose wheel carries its weights and tokenizer: no download.

:func:`load_embedder` builds the 256-dimension ``l2_supercat`` model from the files inside the
installed package (``wordllama/weights/*.safetensors``, ``wordllama/tokenizers/*.json``) instead
of ``WordLlama.load()``, which in 0.4.0.post1 looks for the tokenizer under ``tokenizer/`` (not the
``tokenizers/`` it ships) and then tries Hugging Face. Loading takes about two seconds; embedding
is a lookup and a mean of token vectors, so it is cheap enough for every ingest and query.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DIMENSIONS", "Embedder", "load_embedder"]

DIMENSIONS = 256

log = logging.getLogger(__name__)


class Embedder:
    """Texts to unit vectors (float32, :data:`DIMENSIONS` wide); cosine similarity is a dot product."""

    def __init__(self, model: Any):
        self._model = model

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """The unit vectors of ``texts`` (a zero vector for a text with no known token)."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        vectors = np.asarray(self._model.embed(texts, norm=False), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        return unit


@functools.cache
def load_embedder() -> Embedder | None:
    """The wordllama embedder from the installed wheel's own files; None when it is not installed.

    Loaded once per process (the model is read-only and shared).
    """
    try:
        import wordllama
        from safetensors import safe_open
        from wordllama.inference import WordLlamaInference
        from wordllama.wordllama import WordLlama
    except ImportError:
        log.warning("wordllama is not installed: dense retrieval is off")
        return None
    root = Path(wordllama.__file__).parent
    tokenizer = WordLlama.load_tokenizer(root / "tokenizers" / "l2_supercat_tokenizer_config.json")
    with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np", device="cpu") as f:
        weights = f.get_tensor("embedding.weight")
    return Embedder(WordLlamaInference(weights, tokenizer, binary=False))
