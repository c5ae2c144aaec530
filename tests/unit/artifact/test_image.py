"""`artifact.image.decode_image`: every mode to RGB, EXIF orientation, draft decode, refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from graft.artifact.image import ImageDecodeError, decode_image, load_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_rgb_jpeg_decodes_like_pillow(photos):
    data = encode(photos["chelsea"], "JPEG", quality=90)
    decoded = decode_image(data)
    assert decoded.mode == "RGB" and decoded.size == photos["chelsea"].size
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(photos, mode):
    source = photos["coffee"].resize((64, 48))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    else:
        image = source.convert(mode)
    fmt = {"CMYK": "JPEG", "I;16": "TIFF"}.get(mode, "PNG")
    decoded = decode_image(encode(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (64, 48)
    if mode == "I;16":
        # 16-bit values are rescaled to 8 bits, not clipped at 255 (which would be all white).
        np.testing.assert_array_equal(np.asarray(decoded)[..., 0], np.asarray(source.convert("L")))


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert np.asarray(decode_image(encode(image, "PNG")))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (8, 8), 0)
    palette.info["transparency"] = 0
    assert np.asarray(decode_image(encode(palette, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(photos):
    image = photos["chelsea"]  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (image.height, image.width)


def test_draft_decodes_large_jpeg_at_reduced_scale(photos, tmp_path):
    large = photos["astronaut"].resize((2048, 2048))
    path = tmp_path / "large.jpg"
    large.save(path, quality=90)
    decoded = load_image(path, min_side=256)
    assert 256 <= min(decoded.size) < 2048  # the smallest DCT scale that still covers 256
    assert load_image(path).size == (2048, 2048)


def test_truncated_jpeg_is_refused(photos):
    data = encode(photos["chelsea"], "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_image(data[: len(data) // 2])


def test_zero_bytes_and_non_images_are_refused():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="cannot identify"):
        decode_image(b"this is a text file, not an image")


def test_pixel_cap_refuses_before_decoding():
    data = encode(Image.new("L", (400, 300)), "PNG")
    with pytest.raises(ImageDecodeError, match="at most 100000 pixels"):
        decode_image(data, max_pixels=100_000)
    assert decode_image(data, max_pixels=120_000).size == (400, 300)


def test_a_strip_that_explodes_when_resized_is_refused_before_decoding():
    strip = io.BytesIO()
    Image.new("RGB", (20000, 1)).save(strip, format="PNG")
    with pytest.raises(ImageDecodeError, match=r"resizes within 1000000 pixels, got 20000x1"):
        decode_image(strip.getvalue(), min_side=256, max_pixels=1_000_000)
    assert decode_image(strip.getvalue(), max_pixels=1_000_000).size == (20000, 1)  # no resize: fine
