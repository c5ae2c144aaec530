"""Request image bytes -> the model's input, in worker threads: the manifest-driven preprocessing
from `graft.artifact` (decode with draft mode, EXIF and a pixel cap; resize and centre crop;
normalise), timed per stage. Pillow and numpy release the GIL for most of it, so several images
proceed at once without blocking the event loop.
"""

from __future__ import annotations

import time

import numpy as np

from graft.artifact.image import decode_image
from graft.artifact.manifest import Manifest
from graft.artifact.preprocessing import crop, normalize
from graft.service.metrics import metrics


def prepare(data: bytes, manifest: Manifest, model: str, *, max_pixels: int) -> np.ndarray:
    """Decode one encoded image into `manifest`'s input: float32 [3, H, W].

    Exactly `preprocess(decode_image(data, min_side=resize_size), spec)`, in three timed steps.

    Raises:
        ImageDecodeError: not an image, truncated, empty, or over `max_pixels` as sent or once its
            shorter side is resized (a 1 x 100000 strip would become 256 x 25.6 million).
    """
    spec = manifest.image_spec
    started = time.perf_counter()
    image = decode_image(data, min_side=spec.resize_size, max_pixels=max_pixels)
    decoded = time.perf_counter()
    pixels = crop(image, spec)
    cropped = time.perf_counter()
    array = normalize(pixels, spec)
    done = time.perf_counter()
    recorder = metrics()
    recorder.observe_stage("decode", model, decoded - started)
    recorder.observe_stage("preprocess", model, cropped - decoded)
    recorder.observe_stage("normalize", model, done - cropped)
    return array
