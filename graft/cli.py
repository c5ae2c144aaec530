"""`graft`: the one command line. Each subcommand is a thin wrapper over its package's functions.

Packages register their subcommands through `<package>.cli.register(subparsers)`; those modules import
only argparse at module level and the heavy code inside their handlers, so `graft serve` never
imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from graft.artifact.errors import GraftError

# (module providing `register(subparsers)`) in the order `graft --help` lists them.
_COMMAND_MODULES = (
    "graft.models.cli", "graft.export.cli", "graft.service.cli", "graft.batch.cli", "graft.benchmarks.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft", description="Transfer learning from pretrained backbones to a served ONNX model."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except GraftError as error:
        print(f"graft {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
