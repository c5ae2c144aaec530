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
    parser.add_argument("--fp16", action="store_true", help="store a float16 model (float32 inputs/outputs) for GPU serving")
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
    from graft.export.api import export_backbone, export_run
    from graft.export.errors import ExportError

    if args.run and (args.headless or args.weights != "pretrained"):
        raise ExportError("expected --headless/--weights only with --backbone, got them with --run")
    if args.head_only or args.backbone_artifact:
        return _export_head(args)
    if args.backbone:
        manifest = export_backbone(
            args.backbone, args.out, headless=args.headless, weights=args.weights,
            fp16=args.fp16, overwrite=args.overwrite, model_name=args.name,
        )
    else:
        manifest = export_run(args.run, args.out, fp16=args.fp16, overwrite=args.overwrite, model_name=args.name)
    for precision, figures in manifest.parity.items():
        log.info(
            "parity %s: %d images, max abs diff %s, top-1 agreement %s",
            precision, figures.images, figures.max_abs_diff, figures.top1_agreement,
        )
    log.info("artifact %s: %s %s, version %s", args.out, manifest.name, manifest.task, manifest.version)
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
    if args.fp16 or args.register:
        raise ExportError("expected no --fp16/--register with --head-only (a head is numpy weights), got them")
    head = export_head(args.run, args.out, backbone_artifact=args.backbone_artifact, name=args.name,
                       overwrite=args.overwrite)
    backbone = head.spec.backbone
    print(f"{args.out}: head served as {head.name} on {backbone.name} (version {backbone.version})")
    return 0


def _register(args: argparse.Namespace) -> int:
    from graft.export.register import register_artifact

    tag = register_artifact(args.artifact)
    log.info("registered %s as BentoML model %s", args.artifact, tag)
    print(tag)  # the one result, for scripts: `TAG=$(graft register DIR)`
    return 0
