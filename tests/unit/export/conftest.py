"""Export-suite helpers: reference PyTorch models and a tolerance-aware comparison."""

from __future__ import annotations

import numpy as np
import pytest


def _assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> None:
    """float32 agreement, image by image: |actual - expected| <= tolerance * max(1, max |expected|)."""
    assert actual.shape == expected.shape
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * max(1.0, float(np.abs(want).max())))


@pytest.fixture(scope="session")
def assert_close():
    return _assert_close


@pytest.fixture(scope="session")
def lite0_torch():
    """ImageNet Lite0 built straight from the registry: the PyTorch side of every comparison."""
    from graft.models.backbones import get_backbone

    model, _ = get_backbone("tf_efficientnet_lite0").create("pretrained")
    return model.eval()


@pytest.fixture(scope="session")
def photo_batch():
    """16 distinct real images: the 5 parity photos, their mirror images, and 6 crops of them."""
    from PIL import ImageOps

    from graft.export import parity

    photos = parity.photos()
    crops = [p.crop((0, 0, p.width * 2 // 3, p.height * 2 // 3)) for p in photos] + [photos[0].crop((100, 50, 400, 300))]
    return photos + [ImageOps.mirror(p) for p in photos] + crops
