"""Export = ONNX export + `onnx.checker` + parity gate + manifest, as one step that succeeds or leaves nothing.

Everything is written into a temporary directory beside the output and renamed into place at the
end, so a failed export (bad input, checker, parity gate, interrupt) leaves no partial directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from graft.artifact.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    Precision,
    WeightsInfo,
    sha256_file,
    write_manifest,
)
from graft.artifact.outputs import atomic_directory, check_output_dir
from graft.artifact.preprocessing import PreprocessingSpec, preprocess_batch
from graft.export import calibration, graph, parity, quantize
from graft.export.errors import ExportError, OutputExists
from graft.models.backbones import WeightsChoice, get_backbone, imagenet_labels
from graft.models.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint
from graft.models.modules import Backbone
from graft.models.text import TextBackboneEntry
from graft.models.weights import describe_weights

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _Source:
    """What is being exported, and what the manifest says about where it came from."""

    backbone: Backbone
    backbone_name: str
    name: str
    labels: tuple[str, ...]
    preprocessing: PreprocessingSpec
    weights: WeightsInfo
    source_sha256: dict[str, str]
    metrics: dict[str, Any] | None = None
    validation: tuple[str, list] | None = None
    """(description, PIL images) from the run's validation data, for the parity gate."""
    run_dir: Path | None = None


@dataclass(frozen=True)
class Int8Options:
    """Where an INT8 export's calibration images come from, how many, and how it quantizes.

    Attributes:
        calibration: a `graft train` run dir (its training images) or a folder of images; None: the
            exported run's training images, else the stock photos (`export.calibration`).
        calibration_size: images drawn (seeded) to calibrate on.
        held_out_size: at most this many held-out images for the accuracy gate.
    """

    calibration: Path | None = None
    calibration_size: int = 128
    held_out_size: int = 192
    seed: int = 0
    settings: quantize.Settings = quantize.Settings()


def export_backbone(
    name: str,
    out: str | os.PathLike,
    *,
    headless: bool = False,
    weights: WeightsChoice = "pretrained",
    precision: Precision = "fp32",
    int8: Int8Options = Int8Options(),
    overwrite: bool = False,
    model_name: str | None = None,
) -> Manifest:
    """Export a registry backbone with its ImageNet head (classifier) or without it (`headless`).

    Args:
        name: registry name, e.g. "tf_efficientnet_lite0".
        out: the artifact directory to create.
        headless: export an embedder (output `embedding` only) instead of a classifier.
        weights: "pretrained", "none" (random init, recorded as untrained) or a state-dict path.
        precision: "fp32"; "fp16" (float32 inputs/outputs), gated on top-1 agreement with PyTorch;
            "int8" (static quantization), gated on agreement with the FP32 graph on held-out images.
        int8: calibration and settings for "int8".
        overwrite: replace an existing artifact directory at `out`.
        model_name: the manifest's name; defaults to the backbone name (plus "-embedder").

    Returns:
        The manifest written to `out`.
    """
    entry = get_backbone(name)
    _check_out(Path(out), overwrite)
    if isinstance(entry, TextBackboneEntry):
        if not headless or precision != "fp32":
            raise ExportError(f"expected --headless (an embedder; --precision fp32) for the text encoder {name!r}: it has "
                              "no pretrained classes, fit heads on its embeddings")
        from graft.export.text import export_text_backbone

        return export_text_backbone(entry, Path(out), weights=weights, model_name=model_name,
                                    check_out=lambda: _check_out(Path(out), overwrite), producer=_producer_versions())
    untrained = str(weights) == "none"
    with torch.random.fork_rng():
        torch.manual_seed(0)  # random init is reproducible: the same command gives the same artifact
        backbone, source = entry.create(weights=weights)
    description, weights_sha = describe_weights(source)
    labels: tuple[str, ...] = ()
    if not headless:
        labels = tuple(imagenet_labels())
        if len(labels) != backbone.num_classes:
            raise ExportError(
                f"expected {name}'s ImageNet head to have {len(labels)} outputs, got {backbone.num_classes}"
            )
    return _export(
        _Source(
            backbone=backbone,
            backbone_name=name,
            name=model_name or (f"{name}-embedder" if headless else name),
            labels=labels,
            preprocessing=entry.preprocessing,
            weights=WeightsInfo(
                source="none (random init, untrained)" if untrained else description,
                pretrained=not untrained,
                sha256=weights_sha,
            ),
            source_sha256={"weights": weights_sha} if weights_sha else {},
        ),
        Path(out),
        headless=headless,
        precision=precision,
        int8=int8,
        overwrite=overwrite,
    )


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: Precision = "fp32",
    int8: Int8Options = Int8Options(),
    overwrite: bool = False,
    model_name: str | None = None,
    validation_limit: int = 500,
) -> Manifest:
    """Export a `graft train` run dir as a classifier (`logits` and `embedding` from one forward).

    The parity gate adds up to `validation_limit` of the run's validation images (texts) to its photos (sentences).
    The model's name (what the service serves it as) is `model_name`, else `out`'s last path
    component.

    Raises:
        CheckpointError: no checkpoint, or one whose head or weights disagree with its backbone/labels.
    """
    run_dir = Path(run_dir)
    _check_out(Path(out), overwrite)
    checkpoint = load_checkpoint(run_dir)
    config = _read_json(run_dir / "config.json")
    if config and config.get("backbone", checkpoint.backbone) != checkpoint.backbone:
        raise CheckpointError(
            f"expected the checkpoint's backbone to match config.json's {config['backbone']!r}, "
            f"got {checkpoint.backbone!r}"
        )
    labels_file = _read_json(run_dir / "labels.json")
    if labels_file is not None and list(labels_file) != list(checkpoint.labels):
        raise CheckpointError(
            f"expected labels.json to match the checkpoint's {len(checkpoint.labels)} labels, "
            f"got {len(labels_file)} different ones"
        )
    checkpoint_sha = sha256_file(run_dir / CHECKPOINT_FILE)
    # The served name is what the user chose as --out (artifacts/photos -> "photos"), not the
    # run dir's name: a model served under a name nobody typed cost users a 404.
    name = model_name or _tag_safe(Path(out).resolve().name)
    weights = WeightsInfo(source=_run_provenance(run_dir, checkpoint), pretrained=checkpoint.pretrained,
                          sha256=checkpoint_sha)
    if checkpoint.preprocessing is None:  # a text run
        if precision != "fp32":
            raise ExportError(f"expected --precision fp32 for the text run {run_dir}, got {precision}")
        from graft.export.text import export_text_run

        return export_text_run(checkpoint, run_dir, Path(out), name=name, weights=weights,
                               source_sha256={"checkpoint": checkpoint_sha}, metrics=_read_json(run_dir / "metrics.json"),
                               held_out=_validation_texts(config, validation_limit),
                               check_out=lambda: _check_out(Path(out), overwrite), producer=_producer_versions())
    backbone = checkpoint.build()
    return _export(
        _Source(
            backbone=backbone,
            backbone_name=checkpoint.backbone,
            name=name,
            labels=tuple(checkpoint.labels),
            preprocessing=checkpoint.preprocessing,
            weights=weights,
            source_sha256={"checkpoint": checkpoint_sha},
            metrics=_read_json(run_dir / "metrics.json"),
            validation=_validation_images(config, checkpoint.preprocessing, validation_limit),
            run_dir=run_dir,
        ),
        Path(out),
        headless=False,
        precision=precision,
        int8=int8,
        overwrite=overwrite,
    )


def _run_provenance(run_dir: Path, checkpoint) -> str:
    """What the weights are, by run name, strategy and the starting weights' package/hash (no paths)."""
    start = checkpoint.weights_source
    if Path(start).is_file():  # runs from before provenance named packages recorded a local path
        start = describe_weights(start)[0]
    how = {
        "feature-extract": f"linear head trained on the frozen {checkpoint.backbone} ({start})",
        "fine-tune": f"{checkpoint.backbone} fine-tuned from {start}",
        "scratch": f"{checkpoint.backbone} trained from random init",
    }.get(checkpoint.strategy, f"{checkpoint.strategy} from {start}")
    return f"graft run {run_dir.resolve().name}: {how}"


def _export(source: _Source, out: Path, *, headless: bool, precision: Precision, int8: Int8Options,
            overwrite: bool) -> Manifest:
    # Images first: a missing calibration source fails in seconds, not after the export.
    samples = _int8_images(source, int8) if precision == "int8" else None
    quantization = None
    # Checked again before the swap: something may have appeared while exporting.
    with atomic_directory(out, before_swap=lambda: _check_out(out, overwrite)) as tmp:
        io = graph.io_spec(source.backbone, source.preprocessing.input_size, headless=headless)
        fp32_path = tmp / ("model.fp32.onnx" if precision != "fp32" else MODEL_FILE)
        graph.export_onnx(source.backbone, fp32_path, io)

        inputs, sources = _parity_inputs(source)
        reference = parity.torch_outputs(source.backbone, inputs, tuple(o.name for o in io.outputs))
        head = None if headless else source.backbone.head
        figures = {"fp32": parity.check(fp32_path, inputs, reference, parity.FP32, sources, head)}
        if precision == "fp16":
            graph.convert_fp16(fp32_path, tmp / MODEL_FILE)
            figures["fp16"] = parity.check(tmp / MODEL_FILE, inputs, reference, parity.FP16, sources, head)
        elif samples is not None:
            quantization = _quantize(fp32_path, tmp / MODEL_FILE, source, int8.settings, *samples)
        if precision != "fp32":
            fp32_path.unlink()

        model_sha = sha256_file(tmp / MODEL_FILE)
        manifest = Manifest(
            name=source.name,
            version=model_sha[:12],
            task="embedder" if headless else "classifier",
            backbone=source.backbone_name,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            preprocessing=source.preprocessing,
            io=io,
            embedding_dim=source.backbone.embedding_dim,
            weights=source.weights,
            sha256={"model": model_sha, **source.source_sha256},
            parity=figures,
            labels=() if headless else source.labels,
            producer=_producer_versions(),
            metrics=source.metrics,
            precision=precision,
            quantization=quantization,
        )
        write_manifest(tmp, manifest)
    log.info("wrote %s (%s %s, version %s)", out, manifest.task, manifest.precision, manifest.version)
    return manifest


def _int8_images(source: _Source, options: Int8Options) -> tuple[calibration.Images, calibration.Images]:
    """Calibration and held-out images (disjoint) for an INT8 export; see `export.calibration`."""
    sizes = dict(calibration=options.calibration_size, held_out=options.held_out_size, seed=options.seed)
    spec = source.preprocessing
    folder = options.calibration
    if folder is not None and not folder.is_dir():
        raise ExportError(f"expected --calibration to be a run dir or a folder of images, got {folder}")
    run = folder if folder is not None and calibration.is_run(folder) else None
    if folder is None:
        run = source.run_dir
    if run is not None:
        return calibration.run_images(run, spec, **sizes)
    if folder is not None:
        calibrate, held_out = calibration.folder_images(folder, spec, **sizes)
    else:
        calibrate, held_out = calibration.photo_crops(calibration.CALIBRATION_PHOTOS, options.calibration_size,
                                                      options.seed), None
    return calibrate, held_out or calibration.photo_crops(calibration.HELD_OUT_PHOTOS, options.held_out_size,
                                                          options.seed + 1)


def _quantize(fp32: Path, out: Path, source: _Source, settings: quantize.Settings,
              calibrate: calibration.Images, held_out: calibration.Images):
    """Quantize `fp32` into `out` and gate it; the manifest's quantization block."""
    spec = source.preprocessing
    float_nodes = quantize.quantize(fp32, out, calibrate.images, spec, settings)
    # Accuracy only where the held-out labels are the ones this model predicts (a run's own split).
    targets = held_out.targets if held_out.labels and held_out.labels == source.labels else None
    figures = quantize.gate(fp32, out, held_out.images, spec, held_out.sample, targets)
    return quantize.describe(settings, calibrate.sample, float_nodes, figures)


def _parity_inputs(source: _Source) -> tuple[np.ndarray, tuple[str, ...]]:
    images = parity.photos()
    sources = [f"skimage: {', '.join(parity.PHOTOS)}"]
    if source.validation is not None:
        description, extra = source.validation
        images.extend(extra)
        sources.append(description)
    return preprocess_batch(images, source.preprocessing), tuple(sources)


def _validation_images(config: dict | None, spec: PreprocessingSpec, limit: int) -> tuple[str, list] | None:
    """Up to `limit` images of the run's evaluation split, re-drawn from config.json's arguments and
    decoded as evaluation decodes them; None when the run's data is not on this machine.
    """
    from graft.models.data import DataError, load_splits

    config = config or {}
    args = config.get("args", {})
    # data.source is the resolved folder path; args.data may be relative to where training ran.
    data = config.get("data", {}).get("source", args.get("data"))
    if data is None or limit <= 0:
        return None
    try:
        val = load_splits(
            data, seed=args.get("seed", 0), limit_train=args.get("limit_train"),
            limit_val=args.get("limit_val"), min_side=spec.resize_size, warn=False,
        ).val
    except DataError as error:
        log.warning("parity gate without the run's evaluation images: %s", error)
        return None
    count = min(limit, len(val))
    images = [val.image(i, min_side=spec.resize_size) for i in range(count)]
    return f"run evaluation split: first {count} of {len(val)} images of {data}", images


def _validation_texts(config: dict | None, limit: int) -> list[str]:
    """Up to `limit` evaluation texts of a text run, re-read as training split them; none when its
    data is not on this machine (the gate's own sentences still run)."""
    from graft.models.data import DataError
    from graft.models.text_data import load_text_splits

    config = config or {}
    args, data = config.get("args", {}), config.get("data", {})
    if data.get("source") is None or limit <= 0:
        return []
    try:
        val = load_text_splits(data["source"], data.get("val"), seed=args.get("seed", 0),
                               limit_train=args.get("limit_train"), limit_val=args.get("limit_val")).val
    except DataError as error:
        log.warning("parity gate without the run's evaluation texts: %s", error)
        return []
    return val.texts[:limit]  # type: ignore[attr-defined]


def _check_out(out: Path, overwrite: bool) -> None:
    check_output_dir(out, overwrite, marker=MANIFEST_FILE, what="artifact directory", error=OutputExists)


def _producer_versions() -> dict[str, str]:
    import onnxruntime

    return {
        "graft": importlib.metadata.version("graft"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(graph.OPSET),
    }


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _tag_safe(name: str) -> str:
    """A name BentoML accepts as a model tag: lowercase letters, digits, '-', '_', '.'."""
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-_.") or "model"
