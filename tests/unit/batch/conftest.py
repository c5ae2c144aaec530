"""Batch-job fixtures: a held-out image folder (odd modes and sizes, corrupt files) and one local Ray.

The images are real photos from scikit-image saved in the modes and formats users actually have;
the corrupt ones are what a crawl or a bad disk leaves behind.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CORRUPT = ("truncated.jpg", "not-an-image.jpg", "empty.png", "notes.txt")


@pytest.fixture(scope="session")
def held_out(tmp_path_factory, photos) -> tuple[Path, set[str]]:
    """A folder tree of images: (root, names of the files that must come back as errors)."""
    root = tmp_path_factory.mktemp("held-out")
    (root / "nested" / "deeper").mkdir(parents=True)
    chelsea, coffee, astronaut = photos["chelsea"], photos["coffee"], photos["astronaut"]
    chelsea.save(root / "chelsea.jpg", quality=90)
    coffee.resize((1400, 933)).save(root / "coffee-large.jpg", quality=85)
    astronaut.convert("L").save(root / "nested" / "astronaut-grey.png")
    rgba = photos["rocket"].convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, rgba.width, dtype=np.uint8), (rgba.height, 1))))
    rgba.save(root / "nested" / "rocket-rgba.png")
    photos["motorcycle"].convert("P", palette=Image.Palette.ADAPTIVE).save(root / "nested" / "motorcycle-p.png")
    chelsea.convert("CMYK").save(root / "nested" / "deeper" / "chelsea-cmyk.jpg", quality=90)
    sixteen = (np.asarray(coffee.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(root / "nested" / "deeper" / "coffee-16bit.png")
    astronaut.resize((40, 300)).save(root / "strip.webp")  # tiny, tall, another format

    buffer = io.BytesIO()
    coffee.save(buffer, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (root / "not-an-image.jpg").write_bytes(b"<html>404 Not Found</html>")
    (root / "empty.png").write_bytes(b"")
    (root / "nested" / "notes.txt").write_text("a file that is not an image\n")
    return root, set(CORRUPT)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for a test module; jobs run inside it reuse it instead of starting their own."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()
