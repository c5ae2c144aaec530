"""INT8 calibration and held-out images are decoded when read, so their number costs no memory."""

from __future__ import annotations

import pytest
from PIL import Image

from graft.export import calibration


def test_images_are_decoded_when_read_and_not_before():
    reads: list[int] = []

    def decode(index: int) -> Image.Image:
        reads.append(index)
        return Image.new("RGB", (8, 8), (index, 0, 0))

    images = calibration.Decoded(4, decode)
    assert len(images) == 4 and reads == []
    assert [image.getpixel((0, 0))[0] for image in images[1:3]] == [1, 2]
    assert images[-1].getpixel((0, 0))[0] == 3 and reads == [1, 2, 3]
    assert [image.getpixel((0, 0))[0] for image in images] == [0, 1, 2, 3]
    with pytest.raises(IndexError):
        images[4]
