"""argparse types every subcommand shares: whole numbers with a lower bound, refused with
"expected ..., got ..." like every other graft error."""

from __future__ import annotations

import argparse


def positive(kind: type = int):
    """A parser for a number of `kind` (int or float) greater than 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def port(text: str) -> int:
    """A parser for a TCP port number: 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A parser for a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value
