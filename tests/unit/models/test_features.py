"""Batched inference for embedding and evaluation: ONNX Runtime and PyTorch give the same outputs,
and one export serves every image set."""

from __future__ import annotations

import logging

import pytest
import torch

import graft.models.features as features
from graft.models.backbones import get_backbone
from graft.models.data import load_splits

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lite0_and_images():
    entry = get_backbone("tf_efficientnet_lite0")
    model, _ = entry.create(weights="pretrained")
    torch.manual_seed(0)
    model.reset_head(10)
    model.to(memory_format=torch.channels_last)  # as training leaves it
    images = load_splits("fashion-mnist", seed=0, limit_train=10, limit_val=6).val
    return model, images, entry.preprocessing


def run(model, images, spec, backend, output="logits"):
    inference = features.Inference(model, output, spec, device=CPU, num_images=len(images), backend=backend)
    return inference(images, batch_size=4, workers=0, desc="test")


@pytest.mark.slow
def test_onnxruntime_and_pytorch_agree(lite0_and_images, caplog):
    caplog.set_level(logging.WARNING)
    reference = run(*lite0_and_images, "torch")
    outputs = run(*lite0_and_images, "onnxruntime")
    assert "failed" not in caplog.text  # ONNX Runtime really ran
    assert outputs.shape == reference.shape == (6, 10)
    torch.testing.assert_close(outputs, reference, atol=1e-4 * reference.abs().max().item(), rtol=0)


def test_auto_uses_onnxruntime_only_on_cpu_for_many_images(lite0_and_images, monkeypatch):
    chosen = []
    monkeypatch.setattr(features, "to_onnx", lambda *args: chosen.append("onnxruntime") or 1 / 0)
    model, images, spec = lite0_and_images
    run(model, images, spec, "auto")
    assert chosen == []  # 6 images: below ONNX_MIN_IMAGES, an export would not pay back
    monkeypatch.setattr(features, "ONNX_MIN_IMAGES", 1)
    run(model, images, spec, "auto")
    assert chosen == ["onnxruntime"]


def test_a_failed_export_falls_back_to_pytorch(lite0_and_images, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(features, "to_onnx", broken)
    embeddings = run(*lite0_and_images, "onnxruntime", output="embedding")
    assert embeddings.shape == (6, 1280) and torch.isfinite(embeddings).all()
    assert "ONNX export of tf_efficientnet_lite0 failed (unsupported operator)" in caplog.text


def test_one_export_serves_several_image_sets(lite0_and_images, monkeypatch):
    exports = []
    monkeypatch.setattr(features, "to_onnx", lambda *args: exports.append(args) or 1 / 0)
    model, images, spec = lite0_and_images
    embed = features.Inference(model, "embedding", spec, device=CPU, num_images=10_000)
    assert embed.backend == "onnxruntime"
    for _ in range(2):
        embed(images, batch_size=4, workers=0, desc="test")
    assert len(exports) == 1
