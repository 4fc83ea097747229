"""The ranking both backends share: reciprocal-rank fusion and the exact dense scan."""

from __future__ import annotations

import numpy as np

from bhiv_core.knowledge.dense import DIMENSIONS
from bhiv_core.knowledge.index import DENSE_FLOOR, RRF_K, VectorSet, fuse


def test_fusion_sums_reciprocal_ranks_and_scores_against_the_best_possible() -> None:
    fused = fuse([["a", "b", "c"], ["b", "d"]], limit=3)
    assert [key for key, _ in fused] == ["b", "a", "d"]
    best = 2.0 / (RRF_K + 1)
    assert fused[0][1] == (1 / (RRF_K + 2) + 1 / (RRF_K + 1)) / best
    assert fused[1][1] == (1 / (RRF_K + 1)) / best
    assert fuse([[1, 2], [1, 2]], limit=5) == [(1, 1.0), (2, (2 / (RRF_K + 2)) / best)]
    assert fuse([[3], [2]], limit=5)[0][0] == 2  # a tie goes to the lower key


def test_the_scan_is_exact_above_the_floor_and_keeps_only_tagged_rows() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(500, DIMENSIONS)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    query = (matrix[10] + 0.6 * matrix[20]).astype(np.float32)
    query /= np.linalg.norm(query)
    tags = [["even"] if i % 2 == 0 else ["odd"] for i in range(500)]
    vectors: VectorSet[int] = VectorSet()
    vectors.load([(i, matrix[i].tobytes(), tags[i]) for i in range(500)])
    expected = [int(i) for i in np.argsort(-(matrix @ query)) if matrix[i] @ query >= DENSE_FLOOR]
    assert [key for key, _ in vectors.nearest(query, [], limit=50)] == expected[:50]
    assert expected[:2] == [10, 20]
    assert [key for key, _ in vectors.nearest(query, ["even"], limit=50)] == [
        k for k in expected if k % 2 == 0
    ]
    assert vectors.nearest(query, ["even", "odd"], limit=5) == []
    assert vectors.nearest(np.zeros(DIMENSIONS, dtype=np.float32), [], limit=5) == []
