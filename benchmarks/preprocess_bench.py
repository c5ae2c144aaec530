"""Where an image's CPU time goes before the model: decoding (with and without JPEG draft mode), the
resize and centre crop (graft's two-call resize vs one Pillow resize then the crop, which is what
timm and torchvision run), and normalising, per JPEG size, on one thread.

The two resize forms are also compared pixel for pixel on every file: graft's must be identical.
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from graft.artifact.image import decode_image
from graft.artifact.preprocessing import PIL_RESAMPLE, PreprocessingSpec, crop, normalize, resized_size

STAGES = ("decode_full", "decode", "resize_crop_one_call", "resize_crop", "normalize")
"""decode_full: Pillow at full size; decode: graft's (draft mode to the resize size, EXIF, RGB);
resize_crop_one_call: one `Image.resize` then the crop; resize_crop: graft's `crop`; normalize."""


def one_call_crop(image: Image.Image, spec: PreprocessingSpec) -> np.ndarray:
    """The reference: torchvision's Resize(resize_size) + CenterCrop(input_size) on a PIL image."""
    out_w, out_h = resized_size(image.width, image.height, spec.resize_size)
    crop_h, crop_w = spec.input_size
    top, left = int(round((out_h - crop_h) / 2.0)), int(round((out_w - crop_w) / 2.0))
    resized = image.resize((out_w, out_h), PIL_RESAMPLE[spec.interpolation])
    return np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)))


def _median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def bench_preprocess(spec: PreprocessingSpec, files: dict[str, list[Path]], *, repeat: int = 15) -> dict:
    """Median milliseconds per stage, averaged over each size's files, and whether graft's crop
    equals the one-call reference on every file."""
    sizes = {}
    for size, paths in files.items():
        totals = dict.fromkeys(STAGES, 0.0)
        identical = True
        for path in paths:
            data = path.read_bytes()
            image = decode_image(data, min_side=spec.resize_size)
            pixels = crop(image, spec)
            identical &= bool(np.array_equal(pixels, one_call_crop(image, spec)))
            work = {
                "decode_full": lambda: Image.open(io.BytesIO(data)).load(),
                "decode": lambda: decode_image(data, min_side=spec.resize_size),
                "resize_crop_one_call": lambda: one_call_crop(image, spec),
                "resize_crop": lambda: crop(image, spec),
                "normalize": lambda: normalize(pixels, spec),
            }
            for stage in STAGES:
                totals[stage] += _median_ms(work[stage], repeat)
        ms = {stage: round(total / len(paths), 3) for stage, total in totals.items()}
        sizes[size] = {"files": len(paths), "ms": ms, "identical_to_one_call": identical,
                       "resize_saving": round(1 - ms["resize_crop"] / ms["resize_crop_one_call"], 3)}
    return {"kind": "preprocess", "repeat": repeat, "spec": {"resize_size": spec.resize_size,
            "input_size": list(spec.input_size), "interpolation": spec.interpolation}, "sizes": sizes}


def markdown(result: dict) -> str:
    header = "| JPEG | " + " | ".join(STAGES) + " | resize saving | identical |\n|" + "---|" * (len(STAGES) + 3)
    rows = [f"| {size} px ({cell['files']}) | " + " | ".join(f"{cell['ms'][s]:.2f}" for s in STAGES)
            + f" | {cell['resize_saving']:.0%} | {'yes' if cell['identical_to_one_call'] else 'NO'} |"
            for size, cell in result["sizes"].items()]
    return "\n".join([f"Preprocessing, median ms per image, one thread ({result['environment']['cpu']})", "",
                      header, *rows, ""])
