"""Output directories written all at once: refuse to clobber, then swap a finished temp dir into place.

`graft train` (run dirs) and `graft export` (artifacts) share this, so both refuse the same things
and neither leaves a half-written directory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from graft.artifact.errors import GraftError


def check_output_dir(
    out: Path, overwrite: bool, *, marker: str, what: str, error: type[GraftError] = GraftError
) -> None:
    """Refuse an existing `out` unless `overwrite`; even then replace only an empty dir or one holding `marker`.

    NOTE: --overwrite replaces graft's own outputs only, never an arbitrary directory such as `--out .`.
    """
    if not out.exists():
        return
    if not overwrite:
        raise error(f"expected a new {what}, got {out} which exists; pass --overwrite to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file()):
        raise error(f"expected {what} (with {marker}) or an empty directory to overwrite, got {out} which is something else")


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`; an existing `out` is moved aside first and removed after."""
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    out.rename(old / out.name)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
