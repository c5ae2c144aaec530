"""Request images -> model-sized pixels: decode (draft mode, EXIF, any mode to RGB, pixel cap) and
the geometric half of the manifest-driven preprocessing from `artifact/` (resize, centre crop). Runs
in worker threads; Pillow releases the GIL while decoding and resizing, so several images proceed at
once without blocking the event loop. The inference worker normalises whole batches
(`artifact.preprocessing.normalize`), so what crosses processes is uint8, 4x smaller than float32.
"""

from __future__ import annotations

import time

import numpy as np

from graft.artifact.image import decode_image
from graft.artifact.preprocessing import crop
from graft.service.metrics import metrics
from graft.service.models import ServedModel


def prepare(data: bytes, model: ServedModel, *, max_pixels: int) -> np.ndarray:
    """Decode one encoded image and resize and crop it to `model`'s input: uint8 RGB [H, W, 3].

    Raises:
        ImageDecodeError: not an image, truncated, empty, or over `max_pixels` as sent or once its
            shorter side is resized (a 1 x 100000 strip would become 256 x 25.6 million).
    """
    spec = model.manifest.preprocessing
    started = time.perf_counter()
    image = decode_image(data, min_side=spec.resize_size, max_pixels=max_pixels)
    decoded = time.perf_counter()
    array = crop(image, spec)
    done = time.perf_counter()
    recorder = metrics()
    recorder.observe_stage("decode", model.name, decoded - started)
    recorder.observe_stage("preprocess", model.name, done - decoded)
    return array
