"""Export a text encoder (ONNX embedder) or a text run (ONNX classifier) with its tokenizer and
manifest, behind the parity gate, all or nothing.

The graph takes int64 `input_ids` and `attention_mask` [N, L] (batch and length dynamic) and returns
the L2-normalised mean-pooled `embedding`, as sentence-transformers computes it, and for a
classifier the head's `logits` on it from the same forward. The gate tokenises
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
from graft.artifact.text import TOKENIZER_FILE, TextSpec, TextTokenizer, pad
from graft.export import parity
from graft.models.checkpoint import Checkpoint, CheckpointError
from graft.models.modules import Backbone
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


def io_spec(embedding_dim: int, num_classes: int = 0) -> IOSpec:
    """An embedder's `embedding`; a classifier's `logits` too (`num_classes` > 0), as image graphs name them."""
    tokens = (None, None)
    outputs: tuple[TensorSpec, ...] = (TensorSpec(name="embedding", shape=(None, embedding_dim)),)
    if num_classes:
        outputs = (TensorSpec(name="logits", shape=(None, num_classes)), *outputs)
    return IOSpec(
        input=TensorSpec(name=INPUT_IDS, shape=tokens, dtype="int64"),
        mask=TensorSpec(name=ATTENTION_MASK, shape=tokens, dtype="int64"),
        outputs=outputs,
        layout="tokens",
    )


def export_onnx(backbone: Backbone, path: Path, io: IOSpec) -> None:
    """Write the encoder's graph (its outputs as `io` names them) with dynamic batch and length, then
    run the full checker. A classifier's graph is the whole `Backbone`: logits and embedding from one pass.

    NOTE: the TorchScript exporter (`dynamo=False`), not the `torch.export` one the image graphs use:
    on transformers' BERT the latter names an internal value `embedding`, the same as our output,
    and ONNX Runtime refuses the duplicate; the TorchScript graph matches PyTorch to ~1e-7.
    """
    names = [output.name for output in io.outputs]
    module = backbone if "logits" in names else backbone.trunk
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            module.eval(), example, str(path), input_names=[INPUT_IDS, ATTENTION_MASK], output_names=names,
            dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes, **{name: {0: "batch"} for name in names}},
            opset_version=18, dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def check_parity(backbone: Backbone, path: Path, tokenizer: TextTokenizer, io: IOSpec,
                 extra: tuple[str, list[str]] | None = None) -> ParityFigures:
    """PyTorch vs ONNX Runtime (the serving session settings) on `gate_texts` and the `extra`
    (description, texts), in padded batches; `parity.compare` judges, as for images."""
    texts = gate_texts() + (extra[1] if extra else [])
    names = [output.name for output in io.outputs]
    encoded = tokenizer.encode(texts)
    session = open_session(path, providers=[parity.PROVIDER])
    step = parity.BATCH_SIZE // 2  # several batches, each padded differently
    torch_batches: dict[str, list[np.ndarray]] = {name: [] for name in names}
    onnx_batches: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(encoded), step):
        ids, mask = pad([e.ids for e in encoded[start : start + step]], tokenizer.spec.pad_id)
        with torch.inference_mode():
            logits, embedding = backbone.eval()(torch.from_numpy(ids), torch.from_numpy(mask))
        reference = {"logits": logits.numpy(), "embedding": embedding.numpy()}
        for name, value in zip(names, session.run(names, {INPUT_IDS: ids, ATTENTION_MASK: mask})):
            onnx_batches[name].append(value)
            torch_batches[name].append(reference[name])
    sources = [f"graft.export.text: {len(SENTENCES)} real sentences, and all of them as one text cut at "
               f"{tokenizer.spec.max_tokens} tokens"]
    if extra:
        sources.append(extra[0])
    return parity.compare(
        {name: np.concatenate(values) for name, values in onnx_batches.items()},
        {name: np.concatenate(values) for name, values in torch_batches.items()},
        parity.FP32, tuple(sources), backbone.head if "logits" in names else None, batch_size=step, unit="texts",
    )


def export_text_backbone(
    entry: TextBackboneEntry, out: Path, *, weights="pretrained", model_name: str | None = None,
    check_out=lambda: None, producer: dict[str, str],
) -> Manifest:
    """Export `entry`'s encoder as an embedder artifact at `out`: model.onnx, tokenizer.json, manifest.json."""
    backbone, source = entry.create(weights=weights)
    description, weights_sha = describe_weights(source)
    untrained = str(weights) == "none"
    return _write(out, backbone, entry.read(TOKENIZER_FILE), entry.text, check_out=check_out, fields=dict(
        name=model_name or entry.name, task="embedder", backbone=entry.name,
        weights=WeightsInfo(source="none (random init, untrained)" if untrained else description,
                            pretrained=not untrained, sha256=weights_sha),
        producer=producer,
    ), source_sha256={"weights": weights_sha} if weights_sha else {})


def export_text_run(checkpoint: Checkpoint, run_dir: Path, out: Path, *, name: str, weights: WeightsInfo,
                    source_sha256: dict[str, str], metrics: dict | None, held_out: list[str], check_out,
                    producer: dict[str, str]) -> Manifest:
    """Export a text run's checkpoint as a classifier artifact (`logits` and `embedding` from one
    forward), with the run's `tokenizer.json` and text spec; `held_out` texts join the parity gate."""
    if checkpoint.text is None or not (run_dir / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"expected a text run dir with {TOKENIZER_FILE} and a text spec, got {run_dir}")
    return _write(out, checkpoint.build(), (run_dir / TOKENIZER_FILE).read_bytes(), checkpoint.text,
                  check_out=check_out, fields=dict(
                      name=name, task="classifier", backbone=checkpoint.backbone, labels=tuple(checkpoint.labels),
                      weights=weights, producer=producer, metrics=metrics),
                  source_sha256=source_sha256,
                  extra=(f"run evaluation split: {len(held_out)} texts", held_out) if held_out else None)


def _write(out: Path, backbone: Backbone, tokenizer_json: bytes, spec: TextSpec, *, check_out, fields: dict,
           source_sha256: dict[str, str], extra: tuple[str, list[str]] | None = None) -> Manifest:
    """model.onnx, tokenizer.json and manifest.json at `out`, all or nothing, behind the parity gate."""
    with atomic_directory(out, before_swap=check_out) as tmp:
        (tmp / TOKENIZER_FILE).write_bytes(tokenizer_json)
        tokenizer = TextTokenizer(tmp / TOKENIZER_FILE, spec)
        io = io_spec(backbone.embedding_dim, backbone.num_classes if fields["task"] == "classifier" else 0)
        export_onnx(backbone, tmp / MODEL_FILE, io)
        figures = check_parity(backbone, tmp / MODEL_FILE, tokenizer, io, extra)
        model_sha = sha256_file(tmp / MODEL_FILE)
        manifest = Manifest(
            version=model_sha[:12], created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), io=io,
            embedding_dim=backbone.embedding_dim,
            sha256={"model": model_sha, "tokenizer": sha256_file(tmp / TOKENIZER_FILE), **source_sha256},
            parity={"fp32": figures}, modality="text", text=spec, **fields,
        )
        write_manifest(tmp, manifest)
    log.info("wrote %s (text %s, version %s)", out, manifest.task, manifest.version)
    return manifest
