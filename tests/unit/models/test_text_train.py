"""`graft train` on text: real BBC News texts, all-MiniLM-L6-v2's real weights, the run dir, `graft compare`
on text runs, and the one-line refusals of bad text files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from graft.artifact.text import TOKENIZER_FILE
from graft.cli import main
from graft.models.backbones import get_backbone
from graft.models.checkpoint import load_checkpoint
from graft.models.text_data import load_text_splits

pytestmark = pytest.mark.slow

RUN_FILES = {"checkpoint.pt", "labels.json", "config.json", "metrics.json", "curves.png", "confusion_matrix.png",
             TOKENIZER_FILE}
LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def assert_text_run(out: Path, strategy: str, num_eval: int) -> dict:
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert (metrics["strategy"], metrics["labels"], metrics["num_images"]) == (strategy, LABELS, num_eval)
    assert sum(map(sum, metrics["confusion_matrix"])) == num_eval and metrics["history"]
    assert config["text"]["max_tokens"] == 32 and len(config["tokenizer_sha256"]) == 64
    assert "preprocessing" not in config
    return metrics


def test_fine_tune_run_dir_and_only_the_last_layers_train(text_run):
    metrics = assert_text_run(text_run, "fine-tune", num_eval=20)
    assert [entry["phase"] for entry in metrics["history"]] == ["warm-up", "fine-tune"]
    assert metrics["accuracy"] > 0.4  # 5 classes: chance is 0.2
    checkpoint = load_checkpoint(text_run)
    assert checkpoint.preprocessing is None and checkpoint.text.max_tokens == 32
    trained = checkpoint.build()
    pretrained, _ = get_backbone("all-minilm-l6-v2").create()
    before, after = pretrained.trunk.bert, trained.trunk.bert
    # --unfreeze 2 of [embeddings, layer 0..5]: layers 4 and 5 moved, the rest is the pretrained encoder.
    torch.testing.assert_close(after.embeddings.word_embeddings.weight, before.embeddings.word_embeddings.weight)
    torch.testing.assert_close(after.encoder.layer[3].output.dense.weight, before.encoder.layer[3].output.dense.weight)
    assert not torch.equal(after.encoder.layer[5].output.dense.weight, before.encoder.layer[5].output.dense.weight)


def test_feature_extract_holds_out_a_share_and_compare_takes_text_runs(bbc_files, text_run, tmp_path, capsys):
    train, _ = bbc_files
    out = tmp_path / "fe"
    assert main(["train", "--backbone", "all-minilm-l6-v2", "--data", str(train), "--strategy", "feature-extract",
                 "--max-tokens", "32", "--out", str(out)]) == 0
    metrics = assert_text_run(out, "feature-extract", num_eval=10)  # 20% of 8 per class, seeded
    assert metrics["num_train_images"] == 30 and metrics["accuracy"] > 0.4
    assert main(["compare", str(out), str(text_run), "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "feature-extract" in report and "fine-tune" in report and (tmp_path / "cmp" / "curves.png").is_file()


def refused(data: Path, tmp_path: Path, capsys, *extra: str) -> str:
    code = main(["train", "--backbone", "all-minilm-l6-v2", "--data", str(data), "--strategy", "feature-extract",
                 "--out", str(tmp_path / "run"), *extra])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("graft train: error: expected "), errors
    assert not (tmp_path / "run").exists()
    return errors[0]


@pytest.mark.parametrize("name, content, expected", [
    ("a.csv", b"body,label\nhello,x\nbye,y\n", "CSV header with columns text and label"),
    ("a.csv", b"text,label\nhello,x\n ,y\n", "non-empty text and label on line 3"),
    ("a.jsonl", b'{"text": "hello", "label": "x"}\n{"text": "bye"}\n', "non-empty text and label on line 2"),
    ("a.jsonl", b'{"text": "hello", "label": "x"}\nnot json\n', "one JSON object per line"),
    ("a.csv", b"text,label\nhello,x\nbye,x\n", "at least 2 classes"),
    ("a.csv", b"text,label\ncaf\xe9,x\nbye,y\n", "UTF-8 text"),
    ("a.txt", b"hello\n", "a text file (.csv or .jsonl)"),
])
def test_bad_text_files_are_refused_in_one_line(name, content, expected, tmp_path, capsys):
    (tmp_path / name).write_bytes(content)
    assert expected in refused(tmp_path / name, tmp_path, capsys)


def test_evaluation_labels_must_be_training_labels(bbc_files, tmp_path, capsys):
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"text": "A new phone was launched today.", "label": "gadgets"}) + "\n")
    assert "got ['gadgets']" in refused(bbc_files[0], tmp_path, capsys, "--val", str(val))


def test_text_options_are_refused_for_an_image_backbone(tmp_path, capsys):
    code = main(["train", "--backbone", "tf_efficientnet_lite0", "--data", "fashion-mnist", "--strategy",
                 "feature-extract", "--max-tokens", "32", "--out", str(tmp_path / "run")])
    assert code == 2 and "--val and --max-tokens with a text encoder only" in capsys.readouterr().err


def test_jsonl_gives_the_same_split_as_csv(bbc_files, tmp_path):
    train, val = bbc_files
    rows = list(csv.DictReader(train.open(encoding="utf-8")))
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    from_csv, from_jsonl = load_text_splits(train, val), load_text_splits(jsonl, val)
    assert from_jsonl.train.texts == from_csv.train.texts and from_jsonl.labels == tuple(LABELS)
    assert list(from_jsonl.val.targets) == list(from_csv.val.targets) and len(from_jsonl.train) == 40


def test_max_tokens_beyond_the_encoder_is_refused(bbc_files, tmp_path, capsys):
    assert "--max-tokens in 3..256" in refused(bbc_files[0], tmp_path, capsys, "--max-tokens", "512")
