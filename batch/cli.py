"""`graft batch embed|classify`: run an artifact over a whole image collection on Ray Data.

Only argparse and graft's settings at module level; Ray, ONNX Runtime and pyarrow are imported inside
the handler.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from graft.argtypes import non_negative_int, positive
from graft.artifact.settings import RuntimeSettings, env_name

logger = logging.getLogger(__name__)

_RUNTIME_FLAGS = ("batch_size", "intra_op_threads")


def _shared(setting: str) -> str:
    """Where an unset flag's value comes from: the runtime setting the service reads too."""
    return f"${env_name(setting)}, else {RuntimeSettings.model_fields[setting].default}"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="artifact directory or BentoML model tag")
    parser.add_argument("--input", required=True,
                        help="image folder (whole tree), glob ('photos/**/*.jpg'), single image, or Parquet "
                        "file/dataset with an image-bytes or path column (a text model: a text column)")
    parser.add_argument("--output", type=Path, required=True,
                        help="Parquet directory to create (written to OUT.tmp-<id>, then renamed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output of graft batch")
    parser.add_argument("--column", help="Parquet input: the image-bytes or path column (default: detected); for a "
                        "text model, the string column of texts (default: text)")
    parser.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray for this job)")
    parser.add_argument("--batch-size", type=positive(int),
                        help=f"images per ONNX Runtime call (default: {_shared('max_batch_size')})")
    parser.add_argument("--actors", type=positive(int),
                        help="inference actors, one session each (default: one per GPU, 1 without GPUs)")
    parser.add_argument("--decode-tasks", type=positive(int),
                        help="most decode tasks at once (default: as many as free CPUs allow)")
    parser.add_argument("--decode-batch-size", type=positive(int), default=16,
                        help="images per decode task call (default: %(default)s)")
    parser.add_argument("--intra-op-threads", type=non_negative_int,
                        help="ONNX Runtime threads per actor; 0: one per physical core "
                        f"(default: {_shared('intra_op_threads')})")
    parser.add_argument("--actor-cpus", type=positive(float), default=1.0,
                        help="CPUs Ray reserves per inference actor (default: %(default)s)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="Ray Data's progress bars (default: on in a terminal; without one Ray would log "
                             "them as a line per stage every few seconds)")


def register(subparsers: argparse._SubParsersAction) -> None:
    batch = subparsers.add_parser("batch", help="embed or classify a whole image collection on Ray Data")
    what = batch.add_subparsers(dest="batch_command", required=True, metavar="TASK")
    embed = what.add_parser(
        "embed", help="one embedding per image -> Parquet (path, embedding, model, version, error)",
        description="Decode and preprocess in Ray tasks, run ONNX Runtime in an actor pool, write Parquet: "
        "one row per input file, float32 `embedding` (L2-normalised as /embed does), `error` for bad files.",
    )
    _add_common(embed)
    embed.add_argument("--no-normalize", dest="normalize", action="store_false",
                       help="raw embeddings instead of L2-normalised ones")
    embed.set_defaults(handler=run, task="embed")
    classify = what.add_parser(
        "classify", help="top-k labels per image -> Parquet (path, labels, indices, scores, model, version, error)",
        description="As embed, but softmax top-k (best first, as /classify) from the classifier's logits or a head.",
    )
    _add_common(classify)
    classify.add_argument("--top-k", type=positive(int), default=5, help="predictions per image (default: %(default)s)")
    classify.add_argument("--head", type=Path, help="head artifact directory applied to the backbone's embedding")
    classify.set_defaults(handler=run, task="classify")


def run(args: argparse.Namespace) -> int:
    from graft.batch.job import JobConfig, run_job

    # Unset runtime flags are left to JobConfig's defaults, the settings the service reads too.
    runtime = {name: getattr(args, name) for name in _RUNTIME_FLAGS if getattr(args, name) is not None}
    config = JobConfig(
        task=args.task, model=args.model, input=args.input, output=args.output, head=getattr(args, "head", None),
        column=args.column, top_k=getattr(args, "top_k", 5), normalize=getattr(args, "normalize", True),
        decode_batch_size=args.decode_batch_size, actors=args.actors, decode_tasks=args.decode_tasks,
        actor_cpus=args.actor_cpus, ray_address=args.ray_address, overwrite=args.overwrite, progress=args.progress,
        **runtime,
    )
    summary = run_job(config)
    print(f"graft batch {args.task}: {summary.line()}")
    return 0
