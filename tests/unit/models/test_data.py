"""Data sets: Fashion-MNIST from the Debian idx files, image folders, splits, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.models.data import DataError, FileImages, fashion_mnist, load_splits, split_per_class, stratified_sample


def texture_folder(root: Path, per_class: int = 6) -> Path:
    """One class per scikit-image texture, `per_class` 64x64 JPEG crops of each."""
    import skimage.data

    for name in ("brick", "grass", "gravel"):
        pixels = getattr(skimage.data, name)()
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            row, col = divmod(i, 8)
            Image.fromarray(pixels[row * 64 : row * 64 + 64, col * 64 : col * 64 + 64]).save(root / name / f"{i}.jpg")
    return root


def test_fashion_mnist_test_split_is_complete():
    test = fashion_mnist("t10k")
    assert len(test) == 10_000 and test.pixels.shape == (10_000, 28, 28)
    assert np.bincount(test.targets).tolist() == [1000] * 10
    assert len(test.labels) == 10 and test.labels[9] == "Ankle boot"
    image = test.image(0)
    assert image.mode == "L" and image.size == (28, 28)


def test_fashion_mnist_limits_are_stratified_and_seeded():
    splits = load_splits("fashion-mnist", seed=3, limit_train=200, limit_val=50)
    assert len(splits.train) == 200 and len(splits.val) == 50
    assert np.bincount(splits.train.targets, minlength=10).tolist() == [20] * 10
    again = load_splits("fashion-mnist", seed=3, limit_train=200, limit_val=50)
    assert again.train.fingerprint() == splits.train.fingerprint()
    other = load_splits("fashion-mnist", seed=4, limit_train=200, limit_val=50)
    assert other.train.fingerprint() != splits.train.fingerprint()


def test_stratified_sample_keeps_proportions():
    targets = np.array([0] * 90 + [1] * 10)
    picked = stratified_sample(targets, 20, np.random.default_rng(0))
    assert len(set(picked)) == 20 and np.bincount(targets[picked]).tolist() == [18, 2]
    assert len(stratified_sample(targets, None, np.random.default_rng(0))) == 100


def test_split_per_class_holds_out_every_class():
    targets = np.array([0] * 10 + [1] * 2 + [2] * 5)
    train, val = split_per_class(targets, 0.2, np.random.default_rng(0))
    assert not set(train) & set(val) and len(train) + len(val) == len(targets)
    for cls in range(3):
        assert np.any(targets[val] == cls) and np.any(targets[train] == cls)


def test_image_folder_seeded_split(tmp_path):
    splits = load_splits(texture_folder(tmp_path), seed=0)
    assert splits.labels == ("brick", "grass", "gravel")
    assert len(splits.train) == 15 and len(splits.val) == 3 and splits.skipped_files == 0
    assert isinstance(splits.val, FileImages)
    assert splits.val.image(0).mode == "RGB"


def test_image_folder_train_val_layout(tmp_path):
    texture_folder(tmp_path / "train")
    texture_folder(tmp_path / "val", per_class=2)
    splits = load_splits(tmp_path)
    assert len(splits.train) == 18 and len(splits.val) == 6 and "train/" in splits.split


def test_non_images_are_ignored_quietly_and_unreadable_images_named(tmp_path, caplog):
    root = texture_folder(tmp_path)
    (root / "brick" / "notes.txt").write_text("not an image")
    (root / "grass" / "labels.CSV").write_text("a,b")
    good = (root / "grass" / "0.jpg").read_bytes()
    (root / "grass" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "gravel" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are not candidates at all
    splits = load_splits(root, seed=0)
    assert splits.ignored_files == 2  # notes.txt, labels.CSV: counted, never decoded, never warned about
    assert splits.unreadable_files == ("grass/truncated.jpg",) and splits.skipped_files == 1
    assert len(splits.train) + len(splits.val) == 18
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "truncated.jpg" in warnings[0] and "notes.txt" not in caplog.text
    caplog.clear()
    load_splits(root, seed=0, warn=False)  # export re-draws a run's split: the run already warned
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_fingerprint_changes_with_the_files(tmp_path):
    images = load_splits(texture_folder(tmp_path), seed=0).train
    before = images.fingerprint()
    Image.new("L", (64, 64), 7).save(images.paths[0])
    assert images.fingerprint() != before


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: (root / "only").mkdir(), "at least 2 class"),
        (lambda root: [(root / c).mkdir() for c in ("a", "b")], "expected images in every class"),
        (lambda root: texture_folder(root) and (root / "empty").mkdir(), "got none in"),
    ],
    ids=["one-class", "empty-classes", "one-empty-class"],
)
def test_bad_folders_are_refused(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_splits(tmp_path)


def test_class_with_only_unreadable_files_is_refused(tmp_path):
    root = texture_folder(tmp_path)
    (root / "junk").mkdir()
    (root / "junk" / "a.jpg").write_bytes(b"not a jpeg")
    (root / "junk" / "b.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="readable images in class 'junk'"):
        load_splits(root)


def test_unknown_data_is_refused(tmp_path):
    with pytest.raises(DataError, match="fashion-mnist"):
        load_splits(tmp_path / "missing")
