"""The post-processing every serving path shares: ranking, normalisation, buckets, identities."""

from __future__ import annotations

import numpy as np

from graft.artifact.postprocess import batch_buckets, l2_normalize, top_k


def test_top_k_is_best_first_and_ties_keep_the_lower_index():
    scores = np.array([[0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]], np.float32)
    indices, best = top_k(scores, 3)
    assert indices.tolist() == [[1, 2, 0], [0, 1, 2]]
    np.testing.assert_allclose(best, [[0.4, 0.4, 0.1], [0.7, 0.1, 0.1]])
    assert top_k(scores, 10)[0].shape == (2, 4), "k is capped at the number of classes"


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows():
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(l2_normalize(vectors), [[0.6, 0.8], [0.0, 0.0]])


def test_buckets_are_powers_of_two_then_the_maximum():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
