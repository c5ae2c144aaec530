"""`graft backbones`, `graft train` and `graft compare`.

Only argparse and the standard library at module level: the `graft` entry point imports this
module for every subcommand, and `graft serve` must not pay for (or need) torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graft.argtypes import non_negative_int, positive

STRATEGIES = ("feature-extract", "fine-tune", "scratch")


def register(subparsers: argparse._SubParsersAction) -> None:
    backbones = subparsers.add_parser(
        "backbones", help="list the registered backbones",
        description="The registry: timm and torchvision image backbones and sentence-transformers text encoders, "
                    "their input (image size or most tokens), and whether their "
                    "pretrained weights are on this machine (an installed package or a local file).",
    )
    backbones.set_defaults(handler=backbones_command)

    train = subparsers.add_parser(
        "train",
        help="train a classifier on a pretrained backbone",
        description="Transfer learning into a run dir (checkpoint, labels, config, metrics, plots).",
    )
    train.add_argument("--backbone", required=True, help="registry name (see `graft backbones`)")
    train.add_argument("--data", required=True,
                       help="'fashion-mnist', an image folder (one sub-folder per class, or train/ + val/), or for "
                            "a text encoder a .csv (header text,label) or .jsonl ({\"text\": ..., \"label\": ...}) file")
    train.add_argument("--val", help="text encoders: the evaluation file (.csv/.jsonl); default: 20%% of each class "
                                     "of --data held out, seeded")
    train.add_argument("--max-tokens", type=positive(), default=None,
                       help="text encoders: cut texts to N tokens (default: the encoder's limit); each batch is "
                            "padded to its longest text")
    train.add_argument("--strategy", required=True, choices=STRATEGIES)
    train.add_argument("--out", required=True, type=Path, help="run dir to create")
    train.add_argument("--epochs", type=positive(), default=None,
                       help="fine-tune: epochs after the warm-up; scratch: epochs (both default 2); "
                            "feature-extract has none (its head is fitted to convergence)")
    train.add_argument("--batch-size", type=positive(), default=32)
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default 1e-3) of fine-tune's head, its backbone at 0.1x, and of "
                            "scratch's network; feature-extract has none")
    train.add_argument("--unfreeze", type=_unfreeze,
                       help="fine-tune: number of last backbone blocks to train, or 'all' (default 3)")
    train.add_argument("--limit-train", type=positive(), default=None, help="stratified subsample of N training images")
    train.add_argument("--limit-val", type=positive(), default=None, help="stratified subsample of N evaluation images")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--weights", default="pretrained",
                       help="'pretrained' (default), 'none' (random init) or a state-dict file")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    train.add_argument("--workers", type=non_negative_int,
                       help="data-loading processes (default: CPU count / 4, at most 4)")
    train.set_defaults(handler=train_command)

    compare = subparsers.add_parser(
        "compare",
        help="compare training runs: a Markdown table and overlaid loss/accuracy curves",
        description="Side by side: backbone, strategy, data size, epochs, accuracy, macro F1 and train time "
                    "(report.md), and every run's loss and accuracy per epoch (curves.png).",
    )
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="`graft train` run dirs")
    compare.add_argument("--out", required=True, type=Path, help="directory to write report.md and curves.png")
    compare.add_argument("--overwrite", action="store_true", help="replace an existing comparison dir")
    compare.set_defaults(handler=compare_command)


def _unfreeze(text: str) -> int | str:
    return "all" if text == "all" else non_negative_int(text)


def backbones_command(args: argparse.Namespace) -> int:
    from graft.models.backbones import list_backbones

    rows = [("NAME", "SOURCE", "EMBED DIM", "INPUT", "PARAMS", "OFFLINE WEIGHTS")]
    for entry in list_backbones():
        rows.append((
            entry.name, entry.source, str(entry.embedding_dim), entry.input_description,
            f"{entry.num_params / 1e6:.1f}M", "yes" if entry.offline_weights() else "no",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def train_command(args: argparse.Namespace) -> int:
    from graft.models.backbones import get_backbone

    get_backbone(args.backbone)  # a mistyped name is refused before PyTorch loads (seconds)
    from graft.models.train import TrainConfig, run_training

    # Options left unset keep TrainConfig's defaults, which live in one place.
    options = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "verbose") and v is not None}
    config = TrainConfig(**options)
    metrics = run_training(config)
    timings = metrics["timings"]
    print(f"{args.strategy} {args.backbone}: accuracy {metrics['accuracy']:.4f} on {metrics['num_images']} "
          f"evaluation items ({metrics['num_train_images']} training), {timings['total_s']:.0f} s; run dir {args.out}")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from graft.models.compare import compare_runs

    table = compare_runs(args.runs, args.out, overwrite=args.overwrite)
    print(table, end="")  # the result itself, for the terminal; the files are in --out
    print(f"wrote {args.out}/report.md and {args.out}/curves.png")
    return 0
