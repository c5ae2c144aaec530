"""`graft export` and `graft register`: thin wrappers over `export.export_*` and `export.register_artifact`.

Only argparse and the standard library at module level: torch is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a backbone or a training run to an ONNX artifact (model.onnx + manifest.json)",
        description="Export to ONNX, check the graph, gate on PyTorch/ONNX Runtime parity on real "
        "images, and write the artifact directory (nothing is left behind on failure).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", metavar="NAME", help="a registry backbone with its ImageNet head (see `graft backbones`)")
    source.add_argument("--run", metavar="RUN_DIR", help="a `graft train` run directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="artifact directory to create")
    parser.add_argument("--headless", action="store_true", help="--backbone only: export an embedder (no head)")
    parser.add_argument(
        "--head-only", action="store_true",
        help="--run only (feature-extract runs): write a head artifact (head.json + weights.npz) for the "
             "stock backbone artifact given by --backbone-artifact, instead of a whole model",
    )
    parser.add_argument("--backbone-artifact", metavar="DIR",
                        help="--head-only: the stock artifact the head attaches to (graft export --backbone NAME)")
    parser.add_argument(
        "--weights", default="pretrained", metavar="pretrained|none|PATH",
        help="--backbone only: 'pretrained' (default), 'none' (random init, recorded as untrained) or a state dict file",
    )
    parser.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), default=None,
        help="fp32 (default); fp16: float16 weights (float32 inputs/outputs) for GPU serving; int8: static "
             "quantization for CPU serving, calibrated on real images and refused unless it agrees with FP32 "
             "on held-out ones",
    )
    parser.add_argument("--fp16", action="store_true", help="the same as --precision fp16")
    parser.add_argument("--calibration", metavar="DIR",
                        help="--precision int8: calibrate on a `graft train` run's training images or a folder of "
                             "images (default: --run's training images, else scikit-image's stock photos)")
    parser.add_argument("--calibration-size", type=int, default=128, metavar="N",
                        help="--precision int8: images drawn (seeded) to calibrate on (default 128)")
    parser.add_argument("--held-out-size", type=int, default=None, metavar="N",
                        help="--precision int8: at most N held-out images for the accuracy gate (default 192); "
                             "--head-only on an INT8 backbone: the run's evaluation images its gate uses (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="--precision int8: seeds the image samples (default 0)")
    parser.add_argument("--float-convs", type=int, default=None, metavar="N",
                        help="--precision int8: leave the first N convolutions float32 (default 3: more accurate, "
                             "slower; 0 is fastest; figures in benchmarks/RESULTS.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing artifact directory at --out")
    parser.add_argument("--name", help="the name it is served as (default: --out's last path component; "
                                       "--backbone: the backbone name)")
    parser.add_argument("--register", action="store_true", help="also import the artifact into the BentoML model store")
    parser.set_defaults(handler=_export)

    reg = subparsers.add_parser(
        "register", help="import an artifact directory into the BentoML model store",
        description="Copy model.onnx and manifest.json into a new BentoML model (labels and manifest summary as metadata).",
    )
    reg.add_argument("artifact", metavar="DIR", help="an artifact directory written by `graft export`")
    reg.set_defaults(handler=_register)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from graft.models.backbones import get_backbone

    if args.backbone:
        get_backbone(args.backbone)  # a mistyped name is refused before PyTorch loads (seconds)
    from graft.export.api import Int8Options, export_backbone, export_run
    from graft.export.errors import ExportError
    from graft.export.quantize import Settings

    if args.run and (args.headless or args.weights != "pretrained"):
        raise ExportError("expected --headless/--weights only with --backbone, got them with --run")
    if args.head_only or args.backbone_artifact:
        return _export_head(args)
    if args.fp16 and args.precision not in (None, "fp16"):
        raise ExportError(f"expected one precision, got --fp16 and --precision {args.precision}")
    precision = "fp16" if args.fp16 else args.precision or "fp32"
    if precision != "int8" and args.calibration:
        raise ExportError(f"expected --calibration only with --precision int8, got --precision {precision}")
    held_out = args.held_out_size or Int8Options.held_out_size
    if min(args.calibration_size, held_out) < 2:
        raise ExportError(f"expected at least 2 calibration and 2 held-out images, got {args.calibration_size} and {held_out}")
    settings = Settings() if args.float_convs is None else Settings(float_convs=args.float_convs)
    int8 = Int8Options(calibration=Path(args.calibration) if args.calibration else None,
                       calibration_size=args.calibration_size, held_out_size=held_out, seed=args.seed, settings=settings)
    options = dict(precision=precision, int8=int8, overwrite=args.overwrite, model_name=args.name)
    if args.backbone:
        manifest = export_backbone(args.backbone, args.out, headless=args.headless, weights=args.weights, **options)
    else:
        manifest = export_run(args.run, args.out, **options)
    for precision, figures in manifest.parity.items():
        log.info(
            "parity %s: %d inputs, max abs diff %s, top-1 agreement %s",
            precision, figures.images, figures.max_abs_diff, figures.top1_agreement,
        )
    if manifest.quantization is not None:
        gate = manifest.quantization.gate
        log.info("INT8 gate: %d held-out images (%s), median cosine %.4f, top-1 agreement %s, accuracy %s",
                 gate.held_out.images, gate.held_out.source, gate.median_cosine, gate.top1_agreement, gate.accuracy)
    log.info("artifact %s: %s %s %s, version %s", args.out, manifest.name, manifest.task, manifest.precision,
             manifest.version)
    print(f"{args.out}: served as {manifest.name}")  # the name /classify's `model` field takes
    if args.register:
        _register(argparse.Namespace(artifact=args.out))
    return 0


def _export_head(args: argparse.Namespace) -> int:
    from graft.export.errors import ExportError
    from graft.export.head import export_head

    if not (args.run and args.head_only and args.backbone_artifact):
        given = [flag for flag, value in (("--run", args.run), ("--backbone", args.backbone), ("--head-only", args.head_only),
                                          ("--backbone-artifact", args.backbone_artifact)) if value]
        raise ExportError(f"expected --run RUN --head-only --backbone-artifact DIR together, got {' '.join(given)}")
    if args.fp16 or args.precision or args.calibration or args.register:
        raise ExportError("expected no --fp16/--precision/--calibration/--register with --head-only (a head is numpy "
                          "weights on the backbone artifact's precision), got them")
    limit = {"validation_limit": args.held_out_size} if args.held_out_size else {}
    head = export_head(args.run, args.out, backbone_artifact=args.backbone_artifact, name=args.name,
                       overwrite=args.overwrite, **limit)
    backbone = head.spec.backbone
    print(f"{args.out}: head served as {head.name} on {backbone.name} (version {backbone.version})")
    return 0


def _register(args: argparse.Namespace) -> int:
    from graft.export.register import register_artifact

    tag = register_artifact(args.artifact)
    log.info("registered %s as BentoML model %s", args.artifact, tag)
    print(tag)  # the one result, for scripts: `TAG=$(graft register DIR)`
    return 0
