"""What a batch job reads: an input path resolved to image files or a Parquet dataset, and the model.

Kept free of Ray so the driver can check its arguments (and fail with one line) before a cluster
is started or joined.

Input rules, in order:
- a Parquet file, or a directory whose (non-hidden) files are all `*.parquet`: a Parquet dataset with
  an image-bytes column (binary) or a path column (string);
- a directory: every non-hidden file in its tree, whatever its extension (a file that is not an image
  becomes a row with an `error`, so nothing is skipped silently);
- a pattern with `*`, `?` or `[`: the files it matches (`**` recurses);
- a single file: that one image.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from graft.artifact.errors import GraftError
from graft.artifact.store import ArtifactNotFound, resolve_artifact

PARQUET_SUFFIX = ".parquet"
PATH_COLUMNS = ("path", "file", "filename", "uri")
TEXT_COLUMN = "text"
"""String columns taken as image paths (in this order) when a Parquet dataset has no bytes column."""


class BatchInputError(GraftError, ValueError):
    """The job's input, model or output is not usable as given."""


@dataclass(frozen=True)
class FileSource:
    """Image files, listed on the driver (sorted), each to become one output row."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class ParquetSource:
    """A Parquet dataset holding encoded images (`bytes_column`) or image paths (`path_column`).

    Its other columns are carried through to the output unchanged (ids, captions, ...).
    """

    location: str
    bytes_column: str | None
    path_column: str | None
    text_column: str | None = None  # a text model's input: one string per row


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("_")


def _walk(root: Path) -> list[str]:
    files: list[str] = []
    # Symlinked folders are not followed: a link back up the tree would make the walk endless.
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        files.extend(os.path.join(folder, name) for name in names if not _hidden(name))
    return sorted(files)


def _is_parquet_dir(root: Path) -> bool:
    files = _walk(root)
    return bool(files) and all(f.endswith(PARQUET_SUFFIX) for f in files)


def _parquet_source(location: str, column: str | None) -> ParquetSource:
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        schema = pads.dataset(location, format="parquet").schema
    except (OSError, pa.ArrowInvalid) as error:
        raise BatchInputError(f"expected a readable Parquet dataset, got {location}: {error}") from None
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if column is not None:
        if column in binary:
            return ParquetSource(location, column, _first(strings, PATH_COLUMNS))
        if column in strings:
            return ParquetSource(location, None, column)
        raise BatchInputError(
            f"expected --column to name a binary (image bytes) or string (path) column of {location}, "
            f"got {column!r}; columns: {schema.names}"
        )
    if len(binary) == 1:
        return ParquetSource(location, binary[0], _first(strings, PATH_COLUMNS))
    if len(binary) > 1:
        raise BatchInputError(
            f"expected one binary (image bytes) column in {location}, got {binary}; pick one with --column"
        )
    path_column = _first(strings, PATH_COLUMNS)
    if path_column is None:
        raise BatchInputError(
            f"expected a binary image-bytes column or a string column named one of {list(PATH_COLUMNS)} "
            f"in {location}, got columns {schema.names}; name it with --column"
        )
    return ParquetSource(location, None, path_column)


def _first(names: list[str], wanted: tuple[str, ...]) -> str | None:
    return next((name for name in wanted if name in names), None)


def text_source(location: str, column: str | None) -> ParquetSource:
    """A Parquet dataset's string column of texts for a text model (`--column`, default `text`).

    Raises:
        BatchInputError: not a Parquet dataset, or no such string column.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    path = Path(location).expanduser()
    if not (path.is_file() and path.suffix == PARQUET_SUFFIX or path.is_dir() and _is_parquet_dir(path)):
        raise BatchInputError(f"expected a Parquet file or dataset with a text column for a text model, got {location}")
    try:
        schema = pads.dataset(str(path), format="parquet").schema
    except (OSError, pa.ArrowInvalid) as error:
        raise BatchInputError(f"expected a readable Parquet dataset, got {location}: {error}") from None
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    wanted = column or TEXT_COLUMN
    if wanted not in strings:
        raise BatchInputError(f"expected a string column {wanted!r} of texts in {location} (name it with --column), "
                              f"got string columns {strings}")
    return ParquetSource(str(path), None, None, wanted)


def resolve_source(location: str, *, column: str | None = None) -> FileSource | ParquetSource:
    """Resolve the `--input` argument (see the module docstring for the rules).

    Args:
        location: a folder, a glob pattern, a Parquet file or dataset folder, or one image file.
        column: for Parquet, the image-bytes or path column (auto-detected when None).

    Raises:
        BatchInputError: nothing exists there, or no files were found.
    """
    path = Path(location).expanduser()
    if path.is_file() and path.suffix == PARQUET_SUFFIX or path.is_dir() and _is_parquet_dir(path):
        return _parquet_source(str(path), column)
    if column is not None:
        raise BatchInputError(f"expected --column only with a Parquet input, got {location} (image files)")
    if path.is_dir():
        files = _walk(path)
    elif path.is_file():
        files = [str(path)]
    elif glob.has_magic(location):
        files = sorted(f for f in glob.glob(os.path.expanduser(location), recursive=True) if os.path.isfile(f))
    else:
        raise BatchInputError(f"expected an image folder, a glob or a Parquet dataset, got {location} which does not exist")
    if not files:
        raise BatchInputError(f"expected image files in {location}, got none")
    return FileSource(tuple(os.path.abspath(f) for f in files))


def resolve_model(reference: str) -> Path:
    """An artifact directory for `--model`: a directory holding `manifest.json`, or a BentoML model tag.

    Raises:
        BatchInputError: neither a directory with a manifest nor a tag in the local model store.
    """
    try:
        return resolve_artifact(reference).resolve()
    except ArtifactNotFound as error:
        raise BatchInputError(str(error)) from None
