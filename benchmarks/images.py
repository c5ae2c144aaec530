"""Real JPEG payloads for load tests, made from scikit-image's bundled photos.

Three sizes, keyed by name: `224` (shorter side about 224 px, what a thumbnailing client sends), `640`
(a phone upload resized for the web) and `2000` (a camera photo). scikit-image's photos are at most
640 px wide, so the `2000` set is *upscaled* (Lanczos) from them: the JPEG has real photo content
and the byte size and pixel count of a camera photo, which is what decode cost depends on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
SIZES = {"224": 224, "640": 640, "2000": 2000}
"""Size name -> target length of the image's *shorter* side, in pixels."""
JPEG_QUALITY = 90


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _resized(image: Image.Image, shorter: int) -> Image.Image:
    scale = shorter / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def make_jpegs(folder: str | Path, sizes: tuple[str, ...] = tuple(SIZES)) -> dict[str, list[Path]]:
    """Write every photo at every requested size as a JPEG; return size name -> files.

    Files already present are reused, so repeated runs send byte-identical payloads.
    """
    unknown = set(sizes) - set(SIZES)
    if unknown:
        raise ValueError(f"expected sizes among {list(SIZES)}, got {sorted(unknown)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {size: [] for size in sizes}
    photos: dict[str, Image.Image] = {}
    for size in sizes:
        for name in PHOTOS:
            path = folder / f"{name}-{size}.jpg"
            if not path.is_file():
                if name not in photos:
                    photos[name] = _photo(name)
                _resized(photos[name], SIZES[size]).save(path, quality=JPEG_QUALITY)
            files[size].append(path)
    for size, paths in files.items():
        with Image.open(paths[0]) as first:
            logger.info(
                "%s-px JPEGs: %d files, e.g. %s %dx%d, %.0f kB", size, len(paths), paths[0].name,
                *first.size, paths[0].stat().st_size / 1e3,
            )
    return files
