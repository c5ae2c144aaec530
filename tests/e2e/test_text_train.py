"""A fine-tuned text run exported with `graft export --run` and served: one graph gives `logits` and
`embedding`, ONNX Runtime matches PyTorch, and a real `graft serve` classifies JSON texts with it."""

from __future__ import annotations

import csv

import httpx
import numpy as np
import pytest
import torch

from graft.artifact.manifest import read_manifest
from graft.artifact.runtime import open_session
from graft.artifact.text import TextTokenizer, pad
from graft.cli import main
from graft.export.parity import FP32, scaled_diff
from graft.models.checkpoint import load_checkpoint
from tests.e2e.conftest import serve, started

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "bbc-tuned"


@pytest.fixture(scope="module")
def text_classifier(text_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-classifier") / NAME
    assert main(["export", "--run", str(text_run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def held_out(bbc_files) -> tuple[list[str], list[str]]:
    rows = list(csv.DictReader(bbc_files[1].open(encoding="utf-8")))
    return [row["text"] for row in rows], [row["label"] for row in rows]


def run_artifact(artifact, texts: list[str]) -> dict[str, np.ndarray]:
    """The artifact as the service runs it: its tokenizer, one padded batch, ONNX Runtime."""
    manifest = read_manifest(artifact)
    ids, mask = pad([e.ids for e in TextTokenizer(artifact / "tokenizer.json", manifest.text).encode(texts)],
                    manifest.text.pad_id)
    logits, embedding = open_session(artifact / "model.onnx").run(
        ["logits", "embedding"], {"input_ids": ids, "attention_mask": mask})
    return {"logits": logits, "embedding": embedding, "ids": ids, "mask": mask}


def test_one_forward_gives_logits_and_embedding_equal_to_pytorch(text_classifier, text_run, held_out):
    manifest = read_manifest(text_classifier)
    assert (manifest.task, manifest.modality, manifest.labels) == ("classifier", "text", tuple(sorted(set(held_out[1]))))
    assert [o.name for o in manifest.io.outputs] == ["logits", "embedding"] and manifest.text.max_tokens == 32
    figures = manifest.parity["fp32"]
    assert figures.top1_agreement == 1.0 and max(figures.max_scaled_diff.values()) <= FP32.tolerance
    assert "run evaluation split: 20 texts" in figures.sources and manifest.metrics["strategy"] == "fine-tune"
    onnx = run_artifact(text_classifier, held_out[0])
    with torch.inference_mode():
        logits, embedding = load_checkpoint(text_run).build()(torch.from_numpy(onnx["ids"]),
                                                              torch.from_numpy(onnx["mask"]))
    assert scaled_diff(onnx["logits"], logits.numpy()).max() <= FP32.tolerance
    assert scaled_diff(onnx["embedding"], embedding.numpy()).max() <= FP32.tolerance


def test_served_classify_and_embed_on_texts(text_classifier, held_out, tmp_path):
    texts, labels = held_out
    expected = run_artifact(text_classifier, texts)
    with started(serve([text_classifier], tmp_path / "server.log", GRAFT_MAX_IMAGES=str(len(texts)))) as server:
        models = httpx.get(server.url + "/models", timeout=30).json()
        assert "classifier" in str(models) and NAME in str(models)
        answer = httpx.post(server.url + "/classify", json={"texts": texts, "model": NAME, "top_k": 2}, timeout=120)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        best = [p[0]["label"] for p in predictions]
        names = read_manifest(text_classifier).labels
        assert best == [names[i] for i in expected["logits"].argmax(1)]  # served in the order sent
        probabilities = np.exp(expected["logits"]) / np.exp(expected["logits"]).sum(1, keepdims=True)
        assert abs(predictions[0][0]["score"] - probabilities[0].max()) < 1e-4
        assert np.mean(np.array(best) == np.array(labels)) > 0.4  # 5 classes: chance is 0.2
        embed = httpx.post(server.url + "/embed", json={"texts": texts[:3], "model": NAME}, timeout=60)
        assert embed.status_code == 200, embed.text
        assert np.abs(np.asarray(embed.json()["embeddings"]) - expected["embedding"][:3]).max() < 1e-5
        bad = httpx.post(server.url + "/classify", json={"texts": ["fine", ""], "model": NAME}, timeout=30)
        assert bad.status_code == 400 and "non-empty" in bad.text
