"""`graft export --run RUN --head-only`: a feature-extract run's linear head as a head artifact.

A feature-extract run trains only a linear layer on the frozen pretrained trunk, so the trunk is
exactly the stock backbone artifact's (`graft export --backbone NAME`): the head artifact holds the
run's weights and bias as they are (mean 0, scale 1: the run already folded its standardisation
into them) and names that stock artifact by its `model.onnx` sha256, so the service can apply it to
the embedding it already computes. Fine-tune and scratch runs changed the trunk: they are refused
and exported whole (`graft export --run RUN`).

The parity gate checks the head on the stock artifact against the run's PyTorch model on real
images (the parity photos and up to `validation_limit` of the run's evaluation images), stage by
stage like the artifact gate: the artifact's `embedding` against the PyTorch trunk's, and
`head.apply` against PyTorch's head on that same embedding, each to the gate's tolerance; and
end to end, top-1 agreement with the run's PyTorch logits. On an INT8 backbone artifact the gate
is the INT8 accuracy gate's instead (`check_int8`).

A head binds to its backbone artifact's `model.onnx` sha256, so a head exported on the FP32 artifact
refuses the INT8 one (another file, another hash) and vice versa: export or fit it again on the
artifact that serves it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

import numpy as np
import torch

from graft.artifact.heads import BackboneRef, Head, Provenance, RunRef, make_head, now, write_head
from graft.artifact.manifest import MODEL_FILE, ParityFigures, read_manifest, sha256_file, verify_model_hash
from graft.export import parity, quantize
from graft.export.calibration import Images, run_held_out
from graft.export.errors import ExportError, OutputExists, ParityError, QuantizationError
from graft.models.checkpoint import CHECKPOINT_FILE, load_checkpoint
from graft.models.modules import Backbone
from graft.models.weights import describe_weights

log = logging.getLogger(__name__)


def export_head(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    backbone_artifact: str | os.PathLike,
    name: str | None = None,
    overwrite: bool = False,
    validation_limit: int = 100,
) -> Head:
    """Write a feature-extract run's head as a head artifact attached to `backbone_artifact`.

    Args:
        run_dir: a `graft train --strategy feature-extract` run dir.
        out: the head directory to create.
        backbone_artifact: the stock artifact of the run's backbone and pretrained weights
            (`graft export --backbone NAME`, classifier or `--headless` embedder).
        name: the head's name; defaults to `out`'s last path component.
        overwrite: replace an existing head directory.
        validation_limit: at most this many of the run's evaluation images join the parity photos.

    Raises:
        ExportError: not a feature-extract run, an artifact of another backbone or other weights,
            or a failed parity gate. Nothing is written then.
    """
    from graft.export.api import _read_json, _tag_safe, _validation_images

    run_dir, out, artifact = Path(run_dir), Path(out), Path(backbone_artifact)
    if out.exists() and not overwrite:
        raise OutputExists(f"expected a new head directory, got {out} which exists; pass --overwrite to replace it")
    checkpoint = load_checkpoint(run_dir)
    if checkpoint.strategy != "feature-extract":
        raise ExportError(
            f"expected a feature-extract run for --head-only (its backbone stays the stock one), got a "
            f"{checkpoint.strategy} run whose backbone changed; export it whole: graft export --run {run_dir} --out DIR"
        )
    if checkpoint.preprocessing is None:
        raise ExportError(f"expected an image run for --head-only, got the text run {run_dir}; export it whole "
                          f"(graft export --run {run_dir} --out DIR) or fit a text head with POST /heads")
    manifest = read_manifest(artifact)
    verify_model_hash(artifact, manifest)
    if manifest.backbone != checkpoint.backbone:
        raise ExportError(f"expected a {checkpoint.backbone} backbone artifact, got {manifest.backbone} in {artifact}")
    run_weights = checkpoint.extra.get("weights_sha256") or describe_weights(checkpoint.weights_source)[1]
    artifact_weights = manifest.weights.sha256
    if not manifest.weights.pretrained or (run_weights and artifact_weights and run_weights != artifact_weights):
        raise ExportError(
            f"expected an artifact of the run's weights (sha256 {run_weights}), got {artifact} with "
            f"{manifest.weights.source} (sha256 {artifact_weights}); export it with "
            f"graft export --backbone {checkpoint.backbone} --out DIR"
        )

    metrics = _read_json(run_dir / "metrics.json") or {}
    config = _read_json(run_dir / "config.json") or {}
    labels = list(checkpoint.labels)
    model = checkpoint.build()
    weight = checkpoint.state_dict["head.weight"].numpy()
    bias = checkpoint.state_dict["head.bias"].numpy()
    data = config.get("data", {})
    source = str(data.get("source", ""))
    per_class = _images_per_class(metrics, labels)
    head = make_head(
        name or _tag_safe(out.resolve().name),
        labels,
        weight=weight,
        bias=bias,
        backbone=BackboneRef.of(manifest),
        provenance=Provenance(
            source="run",
            num_images=int(metrics.get("num_train_images") or data.get("num_train") or 0),
            images_per_class=per_class,
            accuracy=metrics.get("accuracy"),
            accuracy_method=(f"the run's evaluation split ({metrics['num_images']} images)"
                             if "num_images" in metrics else "unknown"),
            run=RunRef(
                name=run_dir.resolve().name,
                strategy=checkpoint.strategy,
                checkpoint_sha256=sha256_file(run_dir / CHECKPOINT_FILE),
                data=source if source == "fashion-mnist" else Path(source).name,
            ),
            created_at=now(),
            graft_version=importlib.metadata.version("graft"),
        ),
    )
    if manifest.precision == "int8":
        figures = check_int8(head, model, artifact, manifest,
                             run_held_out(run_dir, checkpoint.preprocessing, validation_limit))
    else:
        validation = _validation_images(config, checkpoint.preprocessing, validation_limit)
        figures = check_parity(head, model, artifact, manifest, validation)
    head = make_head(head.name, labels, weight=weight, bias=bias, backbone=head.spec.backbone,
                     provenance=head.spec.provenance, parity=figures)
    write_head(out, head, overwrite=overwrite)
    log.info("wrote head %s (%d labels) on %s version %s", out, len(labels), manifest.name, manifest.version)
    return head


def _images_per_class(metrics: dict, labels: list[str]) -> dict[str, int]:
    """Training images per class, where the run recorded them (older runs did not)."""
    counts = metrics.get("train_images_per_class")
    return {label: int(counts[label]) for label in labels if label in counts} if counts else {}


def check_int8(head: Head, model: Backbone, artifact: Path, manifest, held_out: Images) -> ParityFigures:
    """The head on an INT8 artifact vs the run's PyTorch model on the run's labelled evaluation images.

    The INT8 embedding cannot match PyTorch's to float32 precision, so the gate is on the head's
    decisions on the run's labels, with `quantize`'s rule for labelled images: the accuracy drop
    decides; top-1 agreement with the run's PyTorch model and the embedding's cosine to PyTorch's
    are recorded, not gated (`quantize.thresholds` says why; the backbone artifact's own gate held
    its cosine to the threshold on its held-out photos). The head itself is still checked stage by
    stage (`head.apply` vs PyTorch's head on the same INT8 embedding) to the FP32 tolerance. Only
    in-domain images count: on the stock photos a Fashion-MNIST head's top-1 is a near-tie that any
    noise flips.

    Raises:
        QuantizationError: a figure past its threshold.
    """
    session = parity.onnx_session(artifact / MODEL_FILE)
    # In chunks, as `quantize.gate`: only per-image figures and the (small) logits outlive a chunk.
    logits_chunks, reference_chunks, cosine_chunks, scaled_chunks = [], [], [], []
    for inputs in quantize.preprocessed(held_out.images, manifest.preprocessing, quantize.CHUNK):
        reference = parity.torch_outputs(model, inputs, ("logits", "embedding"))
        embedding = parity.onnx_outputs(session, inputs)["embedding"]
        logits_chunks.append(head.apply(embedding))
        with torch.inference_mode():
            staged = model.head(torch.from_numpy(embedding)).numpy()
        scaled_chunks.append(parity.scaled_diff(logits_chunks[-1], staged))
        cosine_chunks.append(quantize.cosines(embedding, reference["embedding"]))
        reference_chunks.append(reference["logits"])
    logits, reference_logits = np.concatenate(logits_chunks), np.concatenate(reference_chunks)
    count = len(logits)
    scaled = float(np.max(np.concatenate(scaled_chunks)))
    median = float(np.median(np.concatenate(cosine_chunks)))
    expected = reference_logits.argmax(1)
    top1 = float(np.mean(logits.argmax(1) == expected))
    accuracy = {"fp32": float(np.mean(expected == held_out.targets)),
                "int8": float(np.mean(logits.argmax(1) == held_out.targets))}
    failures = quantize.failures_of(None, top1, accuracy)
    if scaled > parity.FP32.tolerance:
        failures.append(f"head logits {scaled:.3g} of their scale from PyTorch's head > {parity.FP32.tolerance:g}")
    if failures:
        raise QuantizationError(f"INT8 head gate failed on {count} images ({held_out.sample.source}, head on "
                                f"{manifest.name} vs the run's PyTorch model): {'; '.join(failures)} "
                                f"(measured: {quantize.measured(median, top1, accuracy)})")
    log.info("INT8 head gate on %d images: median cosine %.4f, top-1 agreement %.4f, accuracy %s",
             count, median, top1, accuracy)
    return ParityFigures(
        images=count, batch_size=min(parity.BATCH_SIZE, count),
        max_abs_diff={"logits": float(np.max(np.abs(logits - reference_logits)))},
        max_scaled_diff={"logits": scaled}, top1_agreement=top1, tolerance=parity.FP32.tolerance,
        min_top1_agreement=quantize.thresholds(labelled=True, classifier=True).min_top1_agreement,
        sources=(held_out.sample.source,),
        provider=parity.PROVIDER, accuracy=accuracy, median_cosine=median,
    )


def check_parity(head: Head, model: Backbone, artifact: Path, manifest, validation) -> ParityFigures:
    """The head on the stock artifact vs the run's PyTorch model; raises `ParityError` past the gate."""
    images = parity.photos()
    sources = [f"skimage: {', '.join(parity.PHOTOS)}"]
    if validation is not None:
        sources.append(validation[0])
        images.extend(validation[1])
    from graft.artifact.preprocessing import preprocess_batch

    inputs = preprocess_batch(images, manifest.preprocessing)
    gate = parity.FP16 if manifest.precision == "fp16" else parity.FP32
    reference = parity.torch_outputs(model, inputs, ("logits", "embedding"))
    embedding = parity.onnx_outputs(artifact / MODEL_FILE, inputs)["embedding"]
    logits = head.apply(embedding)
    with torch.inference_mode():
        staged = model.head(torch.from_numpy(embedding)).numpy()
    scaled = {"embedding": float(np.max(parity.scaled_diff(embedding, reference["embedding"]))),
              "logits": float(np.max(parity.scaled_diff(logits, staged)))}
    diffs = {"embedding": float(np.max(np.abs(embedding - reference["embedding"]))),
             "logits": float(np.max(np.abs(logits - reference["logits"])))}
    top1 = float(np.mean(logits.argmax(1) == reference["logits"].argmax(1)))
    failures = [f"{k} {v:.3g} of its image's scale > {gate.tolerance:g}" for k, v in scaled.items() if v > gate.tolerance]
    if top1 < gate.min_top1:
        failures.append(f"top-1 agreement {top1:.2%} < {gate.min_top1:.0%}")
    if failures:
        raise ParityError(
            f"{gate.name} head parity gate failed on {len(inputs)} images (run's PyTorch model vs head on "
            f"{manifest.name}): {'; '.join(failures)}"
        )
    log.info("head parity on %d images: scaled diff %s, top-1 agreement %.4f", len(inputs),
             {k: f"{v:.2e}" for k, v in scaled.items()}, top1)
    return ParityFigures(
        images=len(inputs), batch_size=min(parity.BATCH_SIZE, len(inputs)), max_abs_diff=diffs,
        max_scaled_diff=scaled, top1_agreement=top1, tolerance=gate.tolerance, min_top1_agreement=gate.min_top1,
        sources=tuple(sources), provider=parity.PROVIDER,
    )
