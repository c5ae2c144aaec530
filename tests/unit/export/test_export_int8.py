"""`graft export --precision int8`: quantized on real images, refused by the accuracy gate when bad, and
bound to heads by its own hash."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from graft.artifact.heads import HeadError, Provenance, make_head
from graft.artifact.manifest import read_manifest, verify_model_hash
from graft.artifact.preprocessing import preprocess_batch
from graft.export import calibration, quantize

pytestmark = pytest.mark.slow


def test_a_good_int8_artifact_records_its_calibration_settings_and_gate(lite0_int8_embedder, lite0_embedder):
    manifest = read_manifest(lite0_int8_embedder)
    verify_model_hash(lite0_int8_embedder, manifest)
    q = manifest.quantization
    assert manifest.precision == "int8" and manifest.io.input.dtype == "float32"
    assert q.calibration.images == 32 and q.calibration.seed == 0 and "astronaut" in q.calibration.source
    assert (q.format, q.calibration_method, q.per_channel) == ("QDQ", "MinMax", True)
    assert len(q.float_nodes) == quantize.Settings().float_convs
    gate = q.gate
    assert gate.held_out.images == 48 and "chelsea" in gate.held_out.source
    assert not set(calibration.CALIBRATION_PHOTOS) & set(calibration.HELD_OUT_PHOTOS)
    assert gate.min_median_cosine == quantize.MIN_MEDIAN_COSINE <= gate.median_cosine <= 1
    assert gate.top1_agreement is None and gate.accuracy is None  # an embedder: no logits, no labels
    # Another graph than FP32's (int8 weights: a quarter of the bytes), another version.
    fp32 = read_manifest(lite0_embedder)
    assert manifest.version != fp32.version
    assert (lite0_int8_embedder / "model.onnx").stat().st_size < 0.4 * (lite0_embedder / "model.onnx").stat().st_size


def test_the_gate_refuses_an_artifact_calibrated_on_blank_images_and_writes_nothing(tmp_path):
    from graft.export import export_backbone
    from graft.export.api import Int8Options
    from graft.export.errors import QuantizationError

    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(16):
        Image.new("RGB", (256, 256), (128, 128, 128)).save(blank / f"{i}.png")
    out = tmp_path / "artifacts" / "lite0-int8"
    with pytest.raises(QuantizationError) as refused:
        export_backbone("tf_efficientnet_lite0", out, headless=True, precision="int8",
                        int8=Int8Options(calibration=blank, calibration_size=16, held_out_size=32))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("INT8 accuracy gate failed on 32 held-out images")
    assert "median embedding cosine" in message and "< 0.99" in message
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == []  # no artifact, no partial dir


def test_gate_figures_fail_on_each_threshold_and_labels_decide_where_they_exist():
    assert quantize.failures_of(0.995, 0.98, None) == []
    assert [f.split(" ")[0] for f in quantize.failures_of(0.98, 0.9, None)] == ["median", "top-1"]
    assert [f.split(" ")[0] for f in quantize.failures_of(None, 0.9, None)] == ["top-1"]
    # Labelled: the accuracy drop alone decides, whatever the agreement and the cosine.
    assert quantize.failures_of(0.98, 0.9, {"fp32": 0.9, "int8": 0.896}) == []
    assert quantize.failures_of(0.995, 1.0, {"fp32": 0.9, "int8": 0.89}) == [
        "accuracy 89.00% vs FP32 90.00%, a drop of 1.00 points > 0.5"]


def test_a_head_fitted_on_fp32_refuses_the_int8_backbone_and_one_fitted_on_int8_fits(lite0_int8_embedder, lite0_embedder):
    fp32, int8 = read_manifest(lite0_embedder), read_manifest(lite0_int8_embedder)
    provenance = Provenance(source="api", num_images=2, images_per_class={})
    weight = np.zeros((2, fp32.embedding_dim), np.float32)
    on_fp32 = make_head("h", ["a", "b"], weight=weight, bias=np.zeros(2, np.float32), backbone=fp32, provenance=provenance)
    with pytest.raises(HeadError, match=f"got lite0-int8 version {int8.version}"):
        on_fp32.check_backbone(int8)
    on_int8 = make_head("h", ["a", "b"], weight=weight, bias=np.zeros(2, np.float32), backbone=int8, provenance=provenance)
    on_int8.check_backbone(int8)
    with pytest.raises(HeadError):
        on_int8.check_backbone(fp32)


def test_held_out_crops_are_seeded_and_never_the_calibration_photos():
    first = calibration.photo_crops(calibration.HELD_OUT_PHOTOS, 6, seed=1)
    again = calibration.photo_crops(calibration.HELD_OUT_PHOTOS, 6, seed=1)
    spec = read_spec()
    np.testing.assert_array_equal(preprocess_batch(first.images, spec), preprocess_batch(again.images, spec))
    assert first.sample.images == 6 and first.sample.seed == 1


def read_spec():
    from graft.models.backbones import get_backbone

    return get_backbone("tf_efficientnet_lite0").preprocessing


def test_head_only_on_the_int8_backbone_gates_on_the_heads_decisions(trained_run, lite0_int8_embedder, tmp_path):
    from graft.artifact.heads import read_head
    from graft.export.head import export_head

    head = export_head(trained_run, tmp_path / "fmnist-int8", backbone_artifact=lite0_int8_embedder)
    manifest = read_manifest(lite0_int8_embedder)
    head.check_backbone(manifest)
    assert read_head(tmp_path / "fmnist-int8").spec.backbone.sha256 == manifest.sha256["model"]
    figures = head.spec.parity
    assert figures.images == 100 and "evaluation split of fashion-mnist" in figures.sources[0]
    assert figures.accuracy["fp32"] - figures.accuracy["int8"] <= quantize.MAX_ACCURACY_DROP  # what is gated
    assert figures.min_top1_agreement is None and 0.9 < figures.top1_agreement <= 1  # recorded
    assert 0.9 < figures.median_cosine < 1 and figures.max_scaled_diff["logits"] <= 1e-4


def test_a_runs_classifier_in_int8_is_gated_on_its_labelled_split_by_the_accuracy_drop(trained_run, tmp_path):
    from graft.export import export_run
    from graft.export.api import Int8Options

    manifest = export_run(trained_run, tmp_path / "fmnist-int8", precision="int8",
                          int8=Int8Options(calibration_size=32, held_out_size=100))
    q = manifest.quantization
    assert manifest.precision == "int8" and manifest.task == "classifier"
    assert "fmnist-fe" in q.calibration.source and q.calibration.images == 32
    gate = q.gate
    assert gate.held_out.images == 100 and gate.accuracy is not None
    assert gate.max_accuracy_drop == quantize.MAX_ACCURACY_DROP
    assert gate.accuracy["fp32"] - gate.accuracy["int8"] <= quantize.MAX_ACCURACY_DROP
    # Recorded, not gated, on labelled images:
    assert gate.min_median_cosine is None and gate.min_top1_agreement is None
    assert 0.9 < gate.top1_agreement <= 1 and 0.9 < gate.median_cosine <= 1
