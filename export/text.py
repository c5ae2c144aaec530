"""Export a text encoder: ONNX embedder + its tokenizer + manifest, behind the parity gate, all or nothing.

The graph takes int64 `input_ids` and `attention_mask` [N, L] (batch and length dynamic) and returns
the L2-normalised mean-pooled `embedding`, as sentence-transformers computes it. The gate tokenises
real sentences with the artifact's own tokenizer (`graft.artifact.text`, what serving runs) and
compares ONNX Runtime with PyTorch on padded batches.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

from graft.artifact.manifest import (
    MODEL_FILE,
    IOSpec,
    Manifest,
    ParityFigures,
    TensorSpec,
    WeightsInfo,
    sha256_file,
    write_manifest,
)
from graft.artifact.outputs import atomic_directory
from graft.artifact.runtime import open_session
from graft.artifact.text import TOKENIZER_FILE, TextTokenizer, pad
from graft.export import parity
from graft.export.errors import ParityError
from graft.models.backbones import Backbone
from graft.models.text import TextBackboneEntry
from graft.models.weights import describe_weights

log = logging.getLogger(__name__)

SENTENCES = (
    "A man is eating food.",
    "The new movie is awesome, and everybody in the theatre laughed at the same scene.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
    "Two dogs are running through a field of tall grass near the river.",
    "The quarterly report shows revenue growth of 12% year over year, driven by cloud services.",
    "Can you recommend a good restaurant near the train station?",
    "Das Wetter in Berlin ist heute sonnig und warm.",
    "Café au lait, crème brûlée and a naïve résumé: accents survive tokenisation.",
    "東京は日本の首都です。",
    "I loved it 😍 but the ending was too short!!!",
    "The patient was given 5 mg of the drug twice daily for two weeks.",
    "Ok",
)
"""Real sentences of many lengths, scripts and symbols; the gate adds one text over the model's limit."""


def _long_text() -> str:
    """A text longer than any model's token limit here, made of the sentences above."""
    return " ".join(SENTENCES * 8)


def gate_texts() -> list[str]:
    return [*SENTENCES, _long_text()]


INPUT_IDS, ATTENTION_MASK = "input_ids", "attention_mask"


def io_spec(embedding_dim: int) -> IOSpec:
    tokens = (None, None)
    return IOSpec(
        input=TensorSpec(name=INPUT_IDS, shape=tokens, dtype="int64"),
        mask=TensorSpec(name=ATTENTION_MASK, shape=tokens, dtype="int64"),
        outputs=(TensorSpec(name="embedding", shape=(None, embedding_dim)),),
        layout="tokens",
    )


def export_onnx(backbone: Backbone, path: Path) -> None:
    """Write the encoder's embedding graph with dynamic batch and length, then run the full checker.

    NOTE: the TorchScript exporter (`dynamo=False`), not the `torch.export` one the image graphs use:
    on transformers' BERT the latter names an internal value `embedding`, the same as our output,
    and ONNX Runtime refuses the duplicate; the TorchScript graph matches PyTorch to ~1e-7.
    """
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            backbone.trunk.eval(), example, str(path), input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=["embedding"], dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes, "embedding": {0: "batch"}},
            opset_version=18, dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def check_parity(backbone: Backbone, path: Path, tokenizer: TextTokenizer) -> ParityFigures:
    """PyTorch vs ONNX Runtime (the serving session settings) on `gate_texts`, in padded batches."""
    texts = gate_texts()
    encoded = tokenizer.encode(texts)
    session = open_session(path, providers=[parity.PROVIDER])
    torch_batches, onnx_batches = [], []
    for start in range(0, len(encoded), parity.BATCH_SIZE // 2):  # several batches, each padded differently
        ids, mask = pad([e.ids for e in encoded[start : start + parity.BATCH_SIZE // 2]], tokenizer.spec.pad_id)
        with torch.inference_mode():
            torch_batches.append(backbone.embed(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
        onnx_batches.append(session.run(["embedding"], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0])
    expected, actual = np.concatenate(torch_batches), np.concatenate(onnx_batches)
    scaled = float(np.max(parity.scaled_diff(actual, expected)))
    figures = ParityFigures(
        images=len(texts), batch_size=parity.BATCH_SIZE // 2,
        max_abs_diff={"embedding": float(np.max(np.abs(actual - expected)))},
        max_scaled_diff={"embedding": scaled}, tolerance=parity.FP32.tolerance,
        sources=(f"graft.export.text: {len(SENTENCES)} real sentences, and all of them as one text cut at "
                 f"{tokenizer.spec.max_tokens} tokens",),
        provider=parity.PROVIDER,
    )
    if scaled > parity.FP32.tolerance:
        raise ParityError(f"fp32 parity gate failed on {len(texts)} texts (PyTorch vs ONNX Runtime {parity.PROVIDER}): "
                          f"embedding max abs diff {scaled:.3g} > {parity.FP32.tolerance:g}")
    log.info("fp32 parity on %d texts: embedding max abs diff %.2e", len(texts), scaled)
    return figures


def export_text_backbone(
    entry: TextBackboneEntry, out: Path, *, weights="pretrained", model_name: str | None = None,
    check_out=lambda: None, producer: dict[str, str],
) -> Manifest:
    """Export `entry`'s encoder as an embedder artifact at `out`: model.onnx, tokenizer.json, manifest.json."""
    backbone, source = entry.create(weights=weights)
    description, weights_sha = describe_weights(source)
    untrained = str(weights) == "none"
    with atomic_directory(out, before_swap=check_out) as tmp:
        (tmp / TOKENIZER_FILE).write_bytes(entry.read(TOKENIZER_FILE))
        tokenizer = TextTokenizer(tmp / TOKENIZER_FILE, entry.text)
        io = io_spec(backbone.embedding_dim)
        export_onnx(backbone, tmp / MODEL_FILE)
        figures = check_parity(backbone, tmp / MODEL_FILE, tokenizer)
        model_sha = sha256_file(tmp / MODEL_FILE)
        manifest = Manifest(
            name=model_name or entry.name, version=model_sha[:12], task="embedder", backbone=entry.name,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), io=io,
            embedding_dim=backbone.embedding_dim,
            weights=WeightsInfo(source="none (random init, untrained)" if untrained else description,
                                pretrained=not untrained, sha256=weights_sha),
            sha256={"model": model_sha, "tokenizer": sha256_file(tmp / TOKENIZER_FILE),
                    **({"weights": weights_sha} if weights_sha else {})},
            parity={"fp32": figures}, producer=producer, modality="text", text=entry.text,
        )
        write_manifest(tmp, manifest)
    log.info("wrote %s (text embedder, version %s)", out, manifest.version)
    return manifest
