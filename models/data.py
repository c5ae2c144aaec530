"""Training data: an image folder or Fashion-MNIST, split into a training and an evaluation set.

An `ImageSet` is a list of labelled images that loads one PIL image at a time; it never resizes or
normalises (that is `artifact.preprocessing` for evaluation and `models.features` for training).

Bad-file policy: files without an image extension (`notes.txt`, `.DS_Store`, `labels.csv`) are
not candidates at all: they are **ignored quietly and counted**. Files with an image extension that
cannot be decoded (truncated JPEGs, mislabelled files) are **skipped with a warning** naming the
first few, and every one is named (relative to the data folder) in the run's metrics. A class left
with no readable image, or fewer than two classes, is an error, because then the run could not
mean what the user asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from graft.artifact.errors import GraftError
from graft.artifact.image import ImageDecodeError, load_image

log = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""What an image folder's files must end with (case-insensitive) to be candidate images."""
VAL_FRACTION = 0.2
"""Share of each class held out for evaluation when an image folder has no train/val split."""


class DataError(GraftError):
    """A data set that cannot be trained on as given."""


class ImageSet:
    """Labelled images, loaded one at a time as PIL images.

    Attributes:
        labels: class names; `targets` index into them.
        targets: int64 [N] class index of each image.
    """

    def __init__(self, labels: Sequence[str], targets: np.ndarray):
        self.labels = tuple(labels)
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int, min_side: int | None = None) -> Image.Image:
        """Image `index`; JPEG files may be decoded at a reduced scale whose sides stay >= `min_side`."""
        raise NotImplementedError

    def subset(self, indices: np.ndarray) -> "ImageSet":
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash that changes when any image (or its order or label) changes: the cache key of its features."""
        raise NotImplementedError


class FileImages(ImageSet):
    """Images stored as files, decoded with `artifact.image.load_image` (EXIF, any mode -> RGB)."""

    def __init__(self, labels: Sequence[str], targets: np.ndarray, paths: Sequence[Path]):
        super().__init__(labels, targets)
        self.paths = list(paths)

    def image(self, index: int, min_side: int | None = None) -> Image.Image:
        return load_image(self.paths[index], min_side=min_side)

    def subset(self, indices: np.ndarray) -> "FileImages":
        return FileImages(self.labels, self.targets[indices], [self.paths[i] for i in indices])

    def fingerprint(self) -> str:
        digest = hashlib.sha256(repr(self.labels).encode())
        for path, target in zip(self.paths, self.targets):
            stat = path.stat()
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{target}\n".encode())
        return digest.hexdigest()


class ArrayImages(ImageSet):
    """Greyscale images held as a uint8 [N, H, W] array (Fashion-MNIST), returned as PIL 'L' images.

    `artifact.preprocessing.preprocess` converts 'L' to RGB, i.e. greyscale repeated on 3 channels.
    """

    def __init__(self, labels: Sequence[str], targets: np.ndarray, pixels: np.ndarray, source: str):
        super().__init__(labels, targets)
        self.pixels = pixels
        self.source = source

    def image(self, index: int, min_side: int | None = None) -> Image.Image:
        return Image.fromarray(self.pixels[index])  # uint8 [H, W] -> mode L

    def subset(self, indices: np.ndarray) -> "ArrayImages":
        return ArrayImages(self.labels, self.targets[indices], self.pixels[indices], self.source)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.source}\0{self.labels!r}\0".encode())
        digest.update(np.ascontiguousarray(self.pixels).tobytes())
        digest.update(self.targets.tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class Splits:
    """The training and evaluation sets of one run, sharing one label list."""

    train: ImageSet
    val: ImageSet
    source: str
    """Where the data came from, for config.json."""
    split: str
    """How the evaluation set was chosen, for config.json."""
    unreadable_files: tuple[str, ...] = ()
    """Files with an image extension that did not decode, relative to the data folder."""
    ignored_files: int = 0
    """Files without an image extension (not candidates), counted over the scanned folders."""

    @property
    def skipped_files(self) -> int:
        return len(self.unreadable_files)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.train.labels


# ---- sampling ------------------------------------------------------------------------------------
def stratified_sample(targets: np.ndarray, count: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of `count` items whose class proportions match `targets`, in a seeded order.

    Each item gets the key (its rank in a shuffled class + jitter) / class size; sorting by key
    interleaves the classes evenly, so any prefix is stratified. None or a count >= len keeps all.
    """
    keys = np.empty(len(targets))
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + rng.random(len(members))) / len(members)
    order = np.argsort(keys, kind="stable")
    return np.sort(order if count is None else order[:count])


def split_per_class(targets: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices holding out `fraction` of every class, at least one image each side."""
    train: list[int] = []
    val: list[int] = []
    for cls in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == cls))
        n_val = min(max(1, round(fraction * len(members))), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


# ---- Fashion-MNIST -------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): magic, dims as big-endian uint32, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> ArrayImages:
    """Fashion-MNIST 'train' (60,000) or 't10k' (the 10,000-image test split) from Debian's idx files."""
    images, labels = root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise DataError(
            f"expected Fashion-MNIST at {images}, got no such file; install it with "
            "`sudo apt-get install dataset-fashion-mnist`"
        )
    return ArrayImages(FASHION_MNIST_LABELS, _read_idx(labels), _read_idx(images), source=str(images))


# ---- image folders -------------------------------------------------------------------------------
def _scan_folder(root: Path) -> tuple[FileImages, int]:
    """One sub-folder per class (sorted names); every non-hidden file below it with an image
    extension is a candidate image. Returns the images and the number of other files ignored."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"expected an image folder with at least 2 class sub-folders in {root}, got {len(classes)}"
        )
    paths, targets, ignored = [], [], 0
    for index, folder in enumerate(classes):
        files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                 and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        images = sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
        ignored += len(files) - len(images)
        if not images:
            raise DataError(
                f"expected images in every class folder ({', '.join(sorted(IMAGE_EXTENSIONS))}), got none in {folder}"
            )
        paths.extend(images)
        targets.extend([index] * len(images))
    return FileImages([c.name for c in classes], np.array(targets), paths), ignored


def drop_unreadable(images: FileImages, min_side: int | None, name: str, *,
                    warn: bool = True) -> tuple[FileImages, list[Path]]:
    """Decode every file once; drop (and log, at WARNING if `warn`) those that are not complete images.

    Returns:
        The readable images and the paths of the unreadable ones.

    Raises:
        DataError: a class has no readable image left.
    """
    keep, bad = [], []
    for i, path in enumerate(tqdm(images.paths, desc=f"checking {name} images", unit="img", leave=False)):
        try:
            images.image(i, min_side=min_side)
            keep.append(i)
        except ImageDecodeError as error:
            bad.append((path, error))
    if bad:
        shown = "; ".join(f"{p}: {e}" for p, e in bad[:3])
        log.log(logging.WARNING if warn else logging.DEBUG,
                "skipped %d unreadable image file(s) in the %s set, e.g. %s", len(bad), name, shown)
    kept = images.subset(np.array(keep, dtype=np.int64))
    for index, label in enumerate(kept.labels):
        if not np.any(kept.targets == index):
            raise DataError(f"expected readable images in class {label!r}, got none in the {name} set")
    return kept, [path for path, _ in bad]


def _folder_splits(root: Path, seed: int) -> tuple[FileImages, FileImages, str, int]:
    if (root / "train").is_dir() and (root / "val").is_dir():
        (train, ignored_train), (val, ignored_val) = _scan_folder(root / "train"), _scan_folder(root / "val")
        if train.labels != val.labels:
            raise DataError(
                f"expected the same classes in train/ and val/, got {list(train.labels)} and {list(val.labels)}"
            )
        return train, val, "train/ and val/ folders", ignored_train + ignored_val
    images, ignored = _scan_folder(root)
    for index, label in enumerate(images.labels):
        if np.count_nonzero(images.targets == index) < 2:
            raise DataError(f"expected at least 2 images in class {label!r} to hold one out, got 1")
    train_rows, val_rows = split_per_class(images.targets, VAL_FRACTION, np.random.default_rng(seed))
    return (images.subset(train_rows), images.subset(val_rows),
            f"seeded stratified split, {VAL_FRACTION:.0%} held out per class", ignored)


def load_splits(
    data: str | os.PathLike,
    *,
    seed: int = 0,
    limit_train: int | None = None,
    limit_val: int | None = None,
    min_side: int | None = None,
    warn: bool = True,
) -> Splits:
    """Resolve `--data` into training and evaluation sets.

    Args:
        data: 'fashion-mnist' (train split / the full 10,000-image test split) or an image folder:
            one sub-folder per class, or `train/` and `val/` each holding them.
        seed: seeds the folder split and the subsampling.
        limit_train: keep a stratified subsample of this many training images.
        limit_val: likewise for the evaluation set.
        min_side: the preprocessing resize size, so JPEG checks decode at the scale used later.
        warn: log unreadable images at WARNING (training); export re-draws a run's split and
            passes False, since the run already reported them.

    Raises:
        DataError: unknown data, fewer than 2 classes, an empty class.
    """
    rng = np.random.default_rng(seed)
    ignored, unreadable = 0, []
    train: ImageSet
    val: ImageSet
    if str(data) == FASHION_MNIST:
        train, val = fashion_mnist("train"), fashion_mnist("t10k")
        source, split = FASHION_MNIST, "Fashion-MNIST train / test (t10k)"
    else:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"expected '{FASHION_MNIST}' or an image folder, got {str(data)!r} which is neither")
        train, val, split, ignored = _folder_splits(root, seed)
        source = str(root.resolve())
    train = train.subset(stratified_sample(train.targets, limit_train, rng))
    val = val.subset(stratified_sample(val.targets, limit_val, rng))
    if isinstance(train, FileImages) and isinstance(val, FileImages):  # a folder's files, both
        train, bad_train = drop_unreadable(train, min_side, "training", warn=warn)
        val, bad_val = drop_unreadable(val, min_side, "evaluation", warn=warn)
        unreadable = [str(path.resolve().relative_to(Path(source))) for path in bad_train + bad_val]
    if ignored:
        log.info("ignored %d file(s) without an image extension in %s", ignored, source)
    log.info("data %s: %d training / %d evaluation images, %d classes (%s)",
             source, len(train), len(val), len(train.labels), split)
    return Splits(train, val, source, split, tuple(unreadable), ignored)
