"""Output directories written all at once: refuse to clobber, then swap a finished temp dir into place.

Run dirs (`graft train`), comparisons, artifacts (`graft export`), heads and batch outputs are all
written through `atomic_directory`, so they refuse the same things and none leaves a half-written
directory.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

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


@contextmanager
def atomic_directory(out: Path, *, before_swap: Callable[[], None] | None = None,
                     hidden: bool = True) -> Iterator[Path]:
    """Write the directory `out` all at once: the block fills the yielded temp directory beside it;
    when the block succeeds, `before_swap` runs (a last check that `out` may still be replaced) and
    the temp directory replaces `out`; when anything fails, it is removed and `out` is untouched.

    Args:
        hidden: name the temp directory `.OUT.partial-<id>`, which directory scanners (the heads
            store) skip; else `OUT.tmp-<id>`.

    NOTE: not `mkdtemp`: its 0700 would hide the result from a service running as another user.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = uuid.uuid4().hex[:8]
    tmp = out.parent / (f".{out.name}.partial-{suffix}" if hidden else f"{out.name}.tmp-{suffix}")
    tmp.mkdir()
    try:
        yield tmp
        if before_swap is not None:
            before_swap()
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`; an existing `out` is moved aside first and removed after."""
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    out.rename(old / out.name)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
