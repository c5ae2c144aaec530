"""Decode image bytes or files into RGB PIL images, safely and fast.

Used by evaluation (`models/`), the parity gate, the service and the benchmarks alike, so a file
gives the same pixels everywhere. Large JPEGs are decoded with Pillow's draft mode at the smallest
DCT scale that still covers the model's resize size; EXIF orientation is applied; every mode ends as
RGB; a pixel cap refuses decompression bombs before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graft.artifact.errors import GraftError
from graft.artifact.preprocessing import resized_size

DEFAULT_MAX_PIXELS = 40_000_000  # about 7300 x 5500: larger than any camera photo a client should send

_HIGH_BIT_DEPTH = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageDecodeError(GraftError, ValueError):
    """The input is not an image Pillow can decode completely, or it is too large."""

    def __init__(self, *, expected: str, got: str) -> None:
        super().__init__(f"expected {expected}, got {got}")
        self.expected = expected
        self.got = got


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH:
        # Pillow's convert() clips 16/32-bit values to 255; rescale to 8 bits instead.
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        array = np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent pixels become white, as an image viewer shows them, not whatever RGB they hide.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(
    source: bytes | str | os.PathLike | BinaryIO,
    *,
    min_side: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode an image into a fully loaded RGB PIL image.

    Args:
        source: encoded bytes, a path, or a binary file object.
        min_side: the smallest side the caller will resize to (the preprocessing `resize_size`).
            JPEGs are decoded at the smallest draft scale whose both sides are still >= this.
            None decodes at full size.
        max_pixels: refuse images with more pixels than this, as sent or once resized to
            `min_side` (read from the header, before decoding). None disables the check.

    Raises:
        ImageDecodeError: not an image, truncated or corrupt data, or more pixels than allowed.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError(expected="image bytes (JPEG, PNG, ...)", got="an empty file")
        source = io.BytesIO(source)
    try:
        with Image.open(source) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageDecodeError(
                    expected=f"at most {max_pixels} pixels", got=f"{width}x{height} = {width * height}"
                )
            if max_pixels is not None and min_side is not None:
                # A thin strip passes the cap as sent but explodes once its shorter side is resized
                # (1 x 100000 -> 256 x 25.6 million): refuse it before decoding a pixel.
                out_w, out_h = resized_size(width, height, min_side)
                if out_w * out_h > max_pixels:
                    raise ImageDecodeError(
                        expected=f"an aspect ratio that resizes within {max_pixels} pixels",
                        got=f"{width}x{height} (resized to {out_w}x{out_h})",
                    )
            if min_side is not None and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as error:
        raise ImageDecodeError(
            expected="an image file (JPEG, PNG, WebP, BMP, GIF, TIFF)", got="data Pillow cannot identify"
        ) from error
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(expected="an image within Pillow's pixel limit", got=str(error)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Truncated or corrupt data surfaces from Pillow's decoders as any of these.
        raise ImageDecodeError(expected="a complete, valid image", got=f"a corrupt one: {error}") from error


def load_image(path: str | Path, *, min_side: int | None = None) -> Image.Image:
    """Decode an image file from disk (no pixel cap: local files are trusted)."""
    return decode_image(Path(path), min_side=min_side, max_pixels=None)
