"""Registry backbone exports (the default model): graph, dual outputs, dynamic batch, manifest."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from graft.artifact.manifest import MODEL_FILE, read_manifest, verify_model_hash
from graft.artifact.preprocessing import preprocess_batch

pytestmark = pytest.mark.slow


def session(artifact) -> ort.InferenceSession:
    return ort.InferenceSession(str(artifact / MODEL_FILE), providers=["CPUExecutionProvider"])


def test_graph_is_checked_current_opset_dynamic_batch(lite0_classifier):
    model = onnx.load(str(lite0_classifier / MODEL_FILE))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (graph_input,) = model.graph.input
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # symbolic, not a fixed batch
    assert [o.name for o in model.graph.output] == ["logits", "embedding"]


def test_manifest_describes_the_classifier(lite0_classifier):
    manifest = read_manifest(lite0_classifier)
    verify_model_hash(lite0_classifier, manifest)
    assert (manifest.task, manifest.backbone, manifest.precision) == ("classifier", "tf_efficientnet_lite0", "fp32")
    assert len(manifest.labels) == 1000 and manifest.embedding_dim == 1280
    assert manifest.io.output("logits").shape == (None, 1000)
    assert manifest.weights.pretrained and manifest.sha256["weights"] == manifest.weights.sha256
    assert {"torch", "onnx", "graft"} <= set(manifest.producer)
    figures = manifest.parity["fp32"]
    assert figures.images >= 5 and figures.batch_size > 1 and figures.top1_agreement == 1.0
    assert all(figures.max_scaled_diff[k] <= figures.tolerance for k in ("logits", "embedding"))
    assert figures.max_abs_diff["logits"] < 1e-3  # ImageNet logits are of order 10: ~absolute
    # the manifest's preprocessing is what the registry says these weights were trained with
    from graft.models.backbones import get_backbone

    assert manifest.preprocessing == get_backbone("tf_efficientnet_lite0").preprocessing


def test_chelsea_is_a_cat_through_plain_onnxruntime(lite0_classifier, photo_batch):
    manifest = read_manifest(lite0_classifier)
    logits, _ = session(lite0_classifier).run(None, {"input": preprocess_batch(photo_batch[:1], manifest.preprocessing)})
    top3 = [manifest.labels[i] for i in np.argsort(logits[0])[::-1][:3]]
    assert any("cat" in label for label in top3), top3


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_dual_outputs_match_pytorch_at_any_batch(lite0_classifier, lite0_torch, photo_batch, assert_close, batch):
    spec = read_manifest(lite0_classifier).preprocessing
    inputs = preprocess_batch(photo_batch[:batch], spec)
    logits, embedding = session(lite0_classifier).run(["logits", "embedding"], {"input": inputs})
    with torch.inference_mode():
        ref_logits, ref_embedding = lite0_torch(torch.from_numpy(inputs))
    assert logits.shape == (batch, 1000) and embedding.shape == (batch, 1280)
    assert_close(logits, ref_logits.numpy())
    assert_close(embedding, ref_embedding.numpy())
    assert (logits.argmax(1) == ref_logits.numpy().argmax(1)).all()


def test_headless_export_is_an_embedder(lite0_embedder, lite0_torch, photo_batch, assert_close):
    manifest = read_manifest(lite0_embedder)
    assert manifest.task == "embedder" and manifest.labels == ()
    assert [o.name for o in manifest.io.outputs] == ["embedding"]
    assert manifest.parity["fp32"].top1_agreement is None
    sess = session(lite0_embedder)
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    inputs = preprocess_batch(photo_batch[:3], manifest.preprocessing)
    (embedding,) = sess.run(None, {"input": inputs})
    with torch.inference_mode():
        assert_close(embedding, lite0_torch.embed(torch.from_numpy(inputs)).numpy())


def test_export_package_imports_without_torch():
    code = "import sys, export, export.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
