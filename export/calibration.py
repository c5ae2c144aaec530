"""Real images for INT8 calibration and for its accuracy gate, which never share an image.

Three sources, as `graft export --precision int8` takes them:

- a training run (`--run RUN`, or `--calibration RUN` for a stock backbone): a seeded sample of the
  run's training split calibrates; the run's evaluation split is held out (with labels, so the gate
  can measure the accuracy drop when the model predicts the run's labels);
- an image folder (`--calibration DIR`): a seeded sample of its images calibrates, the rest of the
  folder (up to the held-out size) is held out, and the stock held-out photos when too few remain;
- the stock photos (ImageNet backbones with no `--calibration`): scikit-image's bundled photos, split
  by photo: seeded random crops and flips of `CALIBRATION_PHOTOS` calibrate, crops and flips of
  `HELD_OUT_PHOTOS` are held out. Splitting by photo (not by crop) keeps two crops of one photo
  from landing on both sides, where they would flatter the gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence, overload

import numpy as np
from PIL import Image, ImageOps

from graft.artifact.image import load_image
from graft.artifact.manifest import ImageSample
from graft.artifact.preprocessing import PreprocessingSpec
from graft.export.errors import ExportError

CALIBRATION_PHOTOS = ("astronaut", "coffee", "motorcycle_right", "hubble_deep_field", "immunohistochemistry",
                      "camera", "coins", "brick", "grass")
HELD_OUT_PHOTOS = ("chelsea", "rocket", "motorcycle_left", "retina", "gravel", "page")
"""scikit-image's bundled photos (no download), split by photo between calibration and the gate."""
MIN_CROP = 0.35
"""Smallest crop side, as a fraction of the photo's: smaller crops of these photos are mostly texture."""
MIN_FOLDER_HELD_OUT = 32
"""A calibration folder needs this many images beyond the calibration sample to be its own held-out set."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class Decoded(Sequence[Image.Image]):
    """`count` images, each decoded by `decode(index)` when read and not kept: a held-out set costs
    the gate one chunk of images, whatever its size."""

    def __init__(self, count: int, decode: Callable[[int], Image.Image]):
        self._count, self._decode = count, decode

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(index, slice):
            return [self._decode(i) for i in range(self._count)[index]]
        return self._decode(range(self._count)[index])


@dataclass(frozen=True)
class Images:
    """Images with where they came from; `targets` index the run's labels where known."""

    sample: ImageSample
    images: Sequence[Image.Image]
    targets: np.ndarray | None = None
    labels: tuple[str, ...] = ()


def stock_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photos as RGB (`motorcycle_left/right`: its stereo pair)."""
    import skimage.data

    if name.startswith("motorcycle_"):
        array = skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        array = getattr(skimage.data, name)()
    return Image.fromarray(array).convert("RGB")


def photo_crops(names: tuple[str, ...], count: int, seed: int) -> Images:
    """`count` seeded random crops (side MIN_CROP..1 of the photo's) and mirror flips, round-robin over `names`."""
    rng = np.random.default_rng(seed)
    photos = [stock_photo(name) for name in names]
    boxes, mirrored = [], []
    for index in range(count):
        photo = photos[index % len(photos)]
        scale = rng.uniform(MIN_CROP, 1.0)
        width, height = round(photo.width * scale), round(photo.height * scale)
        left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
        boxes.append((left, top, left + width, top + height))
        mirrored.append(rng.random() < 0.5)

    def crop(index: int) -> Image.Image:
        image = photos[index % len(photos)].crop(boxes[index])
        return ImageOps.mirror(image) if mirrored[index] else image

    return Images(ImageSample(f"scikit-image photos, random crops and flips: {', '.join(names)}", count, seed),
                  Decoded(count, crop))


def is_run(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "checkpoint.pt").is_file()


def _run_splits(run_dir: Path, spec: PreprocessingSpec):
    """The run's (splits, data name), re-drawn from config.json's arguments as training drew them."""
    from graft.models.data import DataError, load_splits

    config = json.loads((run_dir / "config.json").read_text())
    args = config.get("args", {})
    data = config.get("data", {}).get("source", args.get("data"))
    try:
        splits = load_splits(data, seed=args.get("seed", 0), limit_train=args.get("limit_train"),
                             limit_val=args.get("limit_val"), min_side=spec.resize_size, warn=False)
    except DataError as error:
        raise ExportError(f"expected the run's data (INT8 needs its images), got: {error}") from None
    return splits, data if data == "fashion-mnist" else Path(data).name


def run_held_out(run_dir: Path, spec: PreprocessingSpec, count: int, splits=None) -> Images:
    """The first `count` images of the run's evaluation split, with their labels.

    Raises:
        ExportError: the run's data is not on this machine.
    """
    splits, name = splits or _run_splits(run_dir, spec)
    val = np.arange(min(count, len(splits.val)))
    return Images(ImageSample(f"run {run_dir.resolve().name}: evaluation split of {name}, first {len(val)}", len(val), 0),
                  Decoded(len(val), partial(splits.val.image, min_side=spec.resize_size)),
                  targets=splits.val.targets[val], labels=tuple(splits.val.labels))


def run_images(run_dir: Path, spec: PreprocessingSpec, *, calibration: int, held_out: int, seed: int) -> tuple[Images, Images]:
    """A seeded sample of the run's training split, and the first `held_out` of its evaluation split.

    Raises:
        ExportError: the run's data is not on this machine.
    """
    splits, name = _run_splits(run_dir, spec)
    train = np.random.default_rng(seed).permutation(len(splits.train))[:calibration]
    return (
        Images(ImageSample(f"run {run_dir.resolve().name}: training split of {name}", len(train), seed),
               Decoded(len(train), lambda i: splits.train.image(int(train[i]), min_side=spec.resize_size))),
        run_held_out(run_dir, spec, held_out, (splits, name)),
    )


def folder_images(folder: Path, spec: PreprocessingSpec, *, calibration: int, held_out: int,
                  seed: int) -> tuple[Images, Images | None]:
    """A seeded sample of the folder's images, and the rest (None when fewer than MIN_FOLDER_HELD_OUT remain).

    Raises:
        ExportError: the folder has no images.
    """
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ExportError(f"expected --calibration to be a run dir or a folder of images ({', '.join(IMAGE_EXTENSIONS)}), "
                          f"got {folder} with none")
    order = np.random.default_rng(seed).permutation(len(paths))
    chosen, rest = order[:calibration], order[calibration:calibration + held_out]
    calibrate = Images(ImageSample(f"folder {folder.resolve().name}: {len(chosen)} of {len(paths)} images", len(chosen), seed),
                       Decoded(len(chosen), lambda i: load_image(paths[chosen[i]], min_side=spec.resize_size)))
    if len(rest) < MIN_FOLDER_HELD_OUT:
        return calibrate, None
    return calibrate, Images(
        ImageSample(f"folder {folder.resolve().name}: {len(rest)} images not drawn for calibration", len(rest), seed),
        Decoded(len(rest), lambda i: load_image(paths[rest[i]], min_side=spec.resize_size)))
