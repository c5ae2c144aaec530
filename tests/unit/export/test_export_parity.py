"""The gate's per-image scaling: a large-magnitude image must not loosen the bound for the others."""

from __future__ import annotations

import numpy as np


def test_scaled_diff_is_per_image():
    from graft.export.parity import FP32, scaled_diff

    expected = np.array([[1e4, -2e4, 5.0], [0.5, -0.2, 0.1]], dtype=np.float32)
    actual = expected + np.array([[0.5, 0.0, 0.0], [0.0, 5e-4, 0.0]], dtype=np.float32)
    scaled = scaled_diff(actual, expected)
    np.testing.assert_allclose(scaled, [0.5 / 2e4, 5e-4], rtol=1e-3)
    # the first image's 0.5 is float32 noise at its scale; the second's 5e-4 is a real fault at its scale
    assert scaled[0] <= FP32.tolerance < scaled[1]
