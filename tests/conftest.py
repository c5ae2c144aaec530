"""Shared fixtures: real photos from scikit-image, a small trained run, exported artifacts.

The expensive fixtures are session-scoped and built through the public entry points (the `graft`
CLI and `export.export_backbone`), so every suite tests against what users get.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image


def pytest_configure(config):
    # Tests never read or fill the user's feature cache: a warm cache would hide extraction bugs.
    config._graft_cache = tempfile.mkdtemp(prefix="graft-test-cache-")
    os.environ["GRAFT_CACHE_DIR"] = config._graft_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_graft_cache", ""), ignore_errors=True)


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")


def skimage_photo(name: str) -> Image.Image:
    import skimage.data

    if name == "motorcycle":  # skimage ships it only as a stereo pair: take the left view
        return Image.fromarray(skimage.data.stereo_motorcycle()[0])
    return Image.fromarray(getattr(skimage.data, name)())


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """scikit-image's bundled real photos, by name, as RGB PIL images."""
    return {name: skimage_photo(name) for name in PHOTOS}


@pytest.fixture(scope="session")
def photo_jpegs(tmp_path_factory, photos) -> dict[str, Path]:
    """The same photos saved as JPEG files (quality 90)."""
    folder = tmp_path_factory.mktemp("jpegs")
    paths = {}
    for name, image in photos.items():
        paths[name] = folder / f"{name}.jpg"
        image.save(paths[name], quality=90)
    return paths


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A feature-extraction run of Lite0 on a few hundred Fashion-MNIST images (CLI, real weights)."""
    from graft.cli import main

    out = tmp_path_factory.mktemp("runs") / "fmnist-fe"
    code = main([
        "train", "--backbone", "tf_efficientnet_lite0", "--data", "fashion-mnist",
        "--strategy", "feature-extract", "--limit-train", "300", "--limit-val", "100",
        "--seed", "0", "--out", str(out),
    ])
    assert code == 0, "graft train failed"
    return out


@pytest.fixture(scope="session")
def lite0_classifier(tmp_path_factory) -> Path:
    """The default model: ImageNet Lite0 classifier artifact (logits + embedding)."""
    from graft.export import export_backbone

    out = tmp_path_factory.mktemp("artifacts") / "lite0"
    export_backbone("tf_efficientnet_lite0", out)
    return out


@pytest.fixture(scope="session")
def lite0_embedder(tmp_path_factory) -> Path:
    """Headless Lite0: an embedder artifact (embedding only)."""
    from graft.export import export_backbone

    out = tmp_path_factory.mktemp("artifacts") / "lite0-embedder"
    export_backbone("tf_efficientnet_lite0", out, headless=True)
    return out


@pytest.fixture(scope="session")
def cpu_image(lite0_classifier, tmp_path_factory) -> str:
    """The CPU container image of the Lite0 artifact, built once per session with `make image`."""
    from tests.containers import build_image

    return build_image(lite0_classifier, tmp_path_factory.mktemp("bentoml"))


@pytest.fixture(scope="session")
def text_artifact(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 exported as a text embedder through `graft export` (real weights, ~15 s)."""
    from graft.cli import main

    out = tmp_path_factory.mktemp("text") / "minilm"
    assert main(["export", "--backbone", "all-minilm-l6-v2", "--headless", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def bbc_files(tmp_path_factory) -> tuple[Path, Path]:
    """40 BBC News texts to train on (8 per class) and 20 held out (4 per class), as CSV files."""
    from graft.benchmarks.text_heads import write_csv

    full_train, full_test = write_csv(tmp_path_factory.mktemp("bbc-full"))
    folder = tmp_path_factory.mktemp("bbc")
    for source, per_class in ((full_train, 8), (full_test, 4)):
        rows = list(csv.DictReader(source.open(encoding="utf-8")))
        chosen: list[dict] = []
        for label in sorted({r["label"] for r in rows}):
            chosen += [row for row in rows if row["label"] == label][:per_class]
        with (folder / source.name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(chosen)
    return folder / full_train.name, folder / full_test.name


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, bbc_files) -> Path:
    """all-MiniLM-L6-v2 fine-tuned (1 epoch, last 2 layers, 32 tokens) on `bbc_files` through `graft train`."""
    from graft.cli import main

    out = tmp_path_factory.mktemp("text-run") / "run"
    train, val = bbc_files
    assert main(["train", "--backbone", "all-minilm-l6-v2", "--data", str(train), "--val", str(val),
                 "--strategy", "fine-tune", "--epochs", "1", "--unfreeze", "2", "--max-tokens", "32",
                 "--batch-size", "8", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def lite0_int8_embedder(tmp_path_factory) -> Path:
    """Headless Lite0 quantized to INT8 on the stock photos (small samples: a test-sized gate)."""
    from graft.export import export_backbone
    from graft.export.api import Int8Options

    out = tmp_path_factory.mktemp("artifacts") / "lite0-int8"
    export_backbone("tf_efficientnet_lite0", out, headless=True, precision="int8", model_name="lite0-int8",
                    int8=Int8Options(calibration_size=32, held_out_size=48))
    return out
