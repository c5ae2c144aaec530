"""Bad input gives one clear error and leaves nothing behind; a failed gate leaves no partial artifact."""

from __future__ import annotations

import json
import shutil

import pytest

from graft.artifact.errors import GraftError
from graft.artifact.manifest import MANIFEST_FILE, read_manifest


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir())


@pytest.fixture(scope="module")
def lite0_state():
    """A Lite0 state dict with a 10-class head (random init: only shapes matter here)."""
    from graft.models.backbones import get_backbone

    model, _ = get_backbone("tf_efficientnet_lite0").create("none")
    model.reset_head(10)
    return model.state_dict()


def make_run(run_dir, state, *, backbone="tf_efficientnet_lite0", labels=10, config=None):
    from graft.models.backbones import get_backbone
    from graft.models.checkpoint import CHECKPOINT_FILE, Checkpoint, save_checkpoint

    run_dir.mkdir(parents=True)
    names = [f"class{i}" for i in range(labels)]
    save_checkpoint(run_dir / CHECKPOINT_FILE, Checkpoint(
        backbone=backbone, labels=names, preprocessing=get_backbone("tf_efficientnet_lite0").preprocessing,
        state_dict=state, weights_source="none", pretrained=False, strategy="feature-extract",
    ))
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def test_unknown_backbone_lists_the_names(tmp_path):
    from graft.export import export_backbone
    from graft.models.backbones import UnknownBackbone

    with pytest.raises(UnknownBackbone, match="expected one of: .*tf_efficientnet_lite0"):
        export_backbone("efficientnet_b99", tmp_path / "a")
    assert leftovers(tmp_path) == []


def test_existing_output_is_refused_without_overwrite(tmp_path):
    from graft.export import OutputExists, export_backbone

    out = tmp_path / "a"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExists, match="--overwrite"):
        export_backbone("tf_efficientnet_lite0", out)
    # --overwrite replaces artifacts only, never an arbitrary directory
    with pytest.raises(OutputExists, match="artifact directory"):
        export_backbone("tf_efficientnet_lite0", out, overwrite=True)
    assert leftovers(tmp_path) == ["a"] and leftovers(out) == ["keep.txt"]


def test_run_from_another_architecture(tmp_path, lite0_state):
    from graft.export import export_run
    from graft.models.checkpoint import CheckpointError

    run = make_run(tmp_path / "run", lite0_state, backbone="resnet18")
    with pytest.raises(CheckpointError, match="expected a checkpoint of backbone 'resnet18'"):
        export_run(run, tmp_path / "a")
    assert leftovers(tmp_path) == ["run"]


def test_head_size_disagreeing_with_labels(tmp_path, lite0_state):
    from graft.export import export_run
    from graft.models.checkpoint import CheckpointError

    run = make_run(tmp_path / "run", lite0_state, labels=3)
    with pytest.raises(CheckpointError, match="expected a head with 3 outputs .*got 10"):
        export_run(run, tmp_path / "a")
    assert leftovers(tmp_path) == ["run"]


def test_config_naming_another_backbone(tmp_path, lite0_state):
    from graft.export import export_run
    from graft.models.checkpoint import CheckpointError

    run = make_run(tmp_path / "run", lite0_state, config={"backbone": "resnet50"})
    with pytest.raises(CheckpointError, match="config.json's 'resnet50'"):
        export_run(run, tmp_path / "a")
    assert leftovers(tmp_path) == ["run"]


def test_not_a_run_dir(tmp_path):
    from graft.export import export_run
    from graft.models.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="expected a graft run dir"):
        export_run(tmp_path, tmp_path / "a")


def test_cli_reports_one_line_and_exit_2(tmp_path, capsys):
    from graft.cli import main

    assert main(["export", "--backbone", "nope", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graft export: error: unknown backbone 'nope'") and "\n" not in err
    assert main(["export", "--run", str(tmp_path), "--headless", "--out", str(tmp_path / "a")]) == 2
    assert "--headless/--weights only with --backbone" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_failed_gate_leaves_no_partial_dir_and_keeps_the_old_artifact(tmp_path, lite0_classifier, monkeypatch):
    """A real parity failure (tolerance below float32 rounding), after model.onnx was written."""
    from graft.export import ParityError, export_backbone, parity

    out = tmp_path / "a"
    out.mkdir()
    shutil.copy(lite0_classifier / MANIFEST_FILE, out / MANIFEST_FILE)
    before = (out / MANIFEST_FILE).read_bytes()
    monkeypatch.setattr(parity, "FP32", parity.Gate("fp32", tolerance=1e-12, min_top1=1.0))
    with pytest.raises(ParityError, match=r"fp32 parity gate failed on 5 images .*logits max abs diff [0-9.e-]+, [0-9.e-]+ of its image's scale > 1e-12"):
        export_backbone("resnet18", out, weights="none", overwrite=True)
    assert leftovers(tmp_path) == ["a"]  # no .a.partial-*, no .a.old-*
    assert (out / MANIFEST_FILE).read_bytes() == before
    assert isinstance(ParityError("x"), GraftError)


@pytest.mark.slow
def test_fp16_export_with_its_own_gate_replaces_an_artifact(tmp_path, lite0_classifier):
    import onnx

    from graft.export import export_backbone

    out = tmp_path / "a"
    out.mkdir()
    shutil.copy(lite0_classifier / MANIFEST_FILE, out / MANIFEST_FILE)
    manifest = export_backbone("resnet18", out, weights="none", precision="fp16", overwrite=True)
    assert read_manifest(out) == manifest and leftovers(tmp_path) == ["a"]
    assert leftovers(out) == ["manifest.json", "model.onnx"]
    assert manifest.precision == "fp16" and not manifest.weights.pretrained
    assert manifest.weights.source.startswith("none") and "weights" not in manifest.sha256
    assert manifest.io.input.dtype == "float32"  # float16 inside, float32 at the edges
    fp16 = manifest.parity["fp16"]
    assert set(manifest.parity) == {"fp32", "fp16"} and fp16.top1_agreement >= 0.99
    assert fp16.min_top1_agreement == 0.99
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    kinds = {init.data_type for init in model.graph.initializer if len(init.dims) == 4}  # conv kernels
    assert kinds == {onnx.TensorProto.FLOAT16}
