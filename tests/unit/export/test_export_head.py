"""`graft export --run RUN --head-only`: a feature-extract run's head on the stock backbone artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.artifact.heads import read_head
from graft.artifact.manifest import read_manifest, sha256_file
from graft.artifact.preprocessing import preprocess_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_head(trained_run, lite0_embedder, tmp_path_factory) -> Path:
    from graft.cli import main

    out = tmp_path_factory.mktemp("heads") / "fmnist-head"
    assert main(["export", "--run", str(trained_run), "--head-only", "--backbone-artifact", str(lite0_embedder),
                 "--out", str(out)]) == 0
    return out


def test_head_carries_the_run_and_attaches_to_the_stock_artifact(run_head, trained_run, lite0_embedder, capsys):
    head = read_head(run_head)
    manifest = read_manifest(lite0_embedder)
    head.check_backbone(manifest)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    spec = head.spec
    assert spec.name == "fmnist-head" and list(spec.labels) == metrics["labels"]
    assert spec.backbone.sha256 == manifest.sha256["model"] and spec.backbone.version == manifest.version
    provenance = spec.provenance
    assert provenance.source == "run" and provenance.accuracy == metrics["accuracy"]
    assert provenance.num_images == 300 and sum(provenance.images_per_class.values()) == 300
    assert provenance.run.name == trained_run.name and provenance.run.strategy == "feature-extract"
    assert provenance.run.checkpoint_sha256 == sha256_file(trained_run / "checkpoint.pt")
    assert provenance.run.data == "fashion-mnist"
    assert "/" not in json.dumps(provenance.run.data) and str(trained_run) not in (run_head / "head.json").read_text()
    np.testing.assert_array_equal(head.mean, 0)
    np.testing.assert_array_equal(head.scale, 1)
    assert spec.parity.top1_agreement == 1.0 and spec.parity.images > 5
    assert sum(p.stat().st_size for p in run_head.iterdir()) < 200_000


def test_head_on_the_artifact_reproduces_the_run(run_head, trained_run, lite0_embedder, photo_batch):
    """head.apply(stock artifact embedding) == the run's PyTorch logits, on real photos."""
    import onnxruntime as ort

    from graft.models.checkpoint import load_checkpoint

    head, manifest = read_head(run_head), read_manifest(lite0_embedder)
    batch = preprocess_batch(photo_batch, manifest.preprocessing)
    session = ort.InferenceSession(str(lite0_embedder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = head.apply(session.run(["embedding"], {"input": batch})[0])
    with torch.inference_mode():
        expected = load_checkpoint(trained_run).build()(torch.from_numpy(batch))[0].numpy()
    assert (logits.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-3 * max(1.0, float(np.abs(expected).max())))


def test_head_only_refuses_a_changed_backbone_and_bad_flags(trained_run, lite0_embedder, tmp_path, capsys):
    from graft.cli import main
    from graft.models.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "ft"
    run.mkdir()
    checkpoint = load_checkpoint(trained_run)
    save_checkpoint(run / "checkpoint.pt", type(checkpoint)(**{**checkpoint.__dict__, "strategy": "fine-tune"}))
    args = ["export", "--run", str(run), "--head-only", "--backbone-artifact", str(lite0_embedder)]
    assert main([*args, "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert "expected a feature-extract run for --head-only" in err and "fine-tune run whose backbone changed" in err
    assert main(["export", "--run", str(trained_run), "--head-only", "--out", str(tmp_path / "h")]) == 2
    assert "expected --run RUN --head-only --backbone-artifact DIR together" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
