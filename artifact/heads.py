"""Head artifacts: a linear classifier on one backbone artifact's embedding (torch-free).

A head is a directory holding `head.json` (the `HeadSpec`: labels, the backbone it was fitted on,
provenance, the weights' hash) and `weights.npz` (plain numpy arrays, no pickle):

- `weight` float32 [C, D], `bias` float32 [C]: the linear map, C = len(labels), D = embedding dim;
- `mean`, `scale` float32 [D]: the standardisation the head was fitted on.

`Head.apply(embeddings)` takes the backbone artifact's raw `embedding` output (float32 [N, D], not
L2-normalised) and returns logits `((x - mean) / scale) @ weight.T + bias`. Storing the
standardisation instead of folding it into `weight` keeps the fitted coefficients readable and
lets a fit use a well-conditioned problem; `apply` folds it once per loaded head, so serving costs
one matrix product. Heads exported from a training run store mean 0 and scale 1 (the run already
folded its standardisation into its linear layer).

A head only makes sense on the exact backbone it was fitted on: `check_backbone(manifest)` refuses
any other `model.onnx` (by sha256) or embedding size.

`weights_sha256` hashes the arrays' names, dtypes, shapes and bytes, not the .npz file: numpy
stamps zip entries with the write time, so equal heads would otherwise hash differently.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass as plain_dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
from pydantic import Field, ValidationError
from pydantic.dataclasses import dataclass

from graft.artifact.documents import JsonDocument
from graft.artifact.errors import GraftError
from graft.artifact.manifest import Manifest, ParityFigures
from graft.artifact.outputs import atomic_directory

SCHEMA_VERSION = 1
HEAD_FILE = "head.json"
WEIGHTS_FILE = "weights.npz"
ARRAYS = ("weight", "bias", "mean", "scale")
NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
"""Head names: lowercase, digits, '-', '_', '.', starting alphanumeric, so a name is always one
safe path component (never '..', '/', or hidden) and a valid BentoML tag."""


class HeadError(GraftError, ValueError):
    """A head that is malformed, disagrees with itself, or does not fit the served backbone."""


class HeadExists(HeadError):
    """A head directory exists and `overwrite` was not given."""


@dataclass(frozen=True)
class BackboneRef:
    """The backbone artifact a head was fitted on: its name, version and `model.onnx` sha256."""

    name: Annotated[str, Field(min_length=1)]
    version: Annotated[str, Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    embedding_dim: Annotated[int, Field(gt=0)]

    @classmethod
    def of(cls, manifest: Manifest) -> BackboneRef:
        return cls(name=manifest.name, version=manifest.version, sha256=manifest.sha256["model"],
                   embedding_dim=manifest.embedding_dim)


@dataclass(frozen=True)
class RunRef:
    """The `graft train` run a head came from, by name and hash (never a local path)."""

    name: str
    strategy: str
    checkpoint_sha256: str
    data: str
    """The data set's name (`fashion-mnist`, or the image folder's name)."""


@dataclass(frozen=True)
class Provenance:
    """Where a head came from and how good it is expected to be.

    Attributes:
        source: "run" (`graft export --head-only`) or "api" (fitted by `POST /heads`).
        num_images: images the head was fitted on.
        images_per_class: label -> number of those images.
        accuracy: estimated accuracy (0..1) on unseen images, None if it could not be estimated.
        accuracy_method: how `accuracy` was measured, in words.
        run: the training run (source "run" only).
    """

    source: Literal["run", "api"]
    num_images: Annotated[int, Field(ge=0)]
    images_per_class: dict[str, int]
    accuracy: float | None = Field(default=None, ge=0, le=1)
    accuracy_method: str = ""
    run: RunRef | None = None
    created_at: str = ""
    graft_version: str = ""


@dataclass(frozen=True)
class HeadSpec(JsonDocument):
    """`head.json`: everything about a head except its arrays."""

    invalid = HeadError
    document = HEAD_FILE

    name: Annotated[str, Field(pattern=f"^{NAME_PATTERN}$")]
    labels: tuple[str, ...]
    embedding_dim: Annotated[int, Field(gt=0)]
    backbone: BackboneRef
    provenance: Provenance
    sha256: dict[str, str]
    """`weights`: `weights_sha256` of the arrays in weights.npz."""
    parity: ParityFigures | None = None
    """Heads exported from a run: the head on the backbone artifact vs the run's PyTorch model."""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"expected head schema_version {SCHEMA_VERSION}, got {self.schema_version}")
        if len(self.labels) < 2:
            raise ValueError(f"expected at least 2 labels, got {len(self.labels)}")
        if len(set(self.labels)) != len(self.labels) or not all(self.labels):
            raise ValueError(f"expected distinct non-empty labels, got {list(self.labels)}")
        if self.embedding_dim != self.backbone.embedding_dim:
            raise ValueError(
                f"expected embedding_dim {self.backbone.embedding_dim} of backbone {self.backbone.name}, "
                f"got {self.embedding_dim}"
            )
        if "weights" not in self.sha256:
            raise ValueError("expected sha256.weights, got none")
        unknown = set(self.provenance.images_per_class) - set(self.labels)
        if unknown:
            raise ValueError(f"expected images_per_class keys among the labels, got {sorted(unknown)}")

    @property
    def version(self) -> str:
        """First 12 hex digits of the weights' hash: changes whenever the head's numbers do."""
        return self.sha256["weights"][:12]


def weights_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Hex SHA-256 over each array's name, dtype, shape and little-endian bytes, in `ARRAYS` order."""
    digest = hashlib.sha256()
    for name in ARRAYS:
        array = np.ascontiguousarray(arrays[name], dtype=np.dtype(arrays[name].dtype).newbyteorder("<"))
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@plain_dataclass(frozen=True, eq=False)
class Head:
    """A loaded head: its spec and float32 arrays, checked against each other on construction."""

    spec: HeadSpec
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        classes, dim = len(self.spec.labels), self.spec.embedding_dim
        expected = {"weight": (classes, dim), "bias": (classes,), "mean": (dim,), "scale": (dim,)}
        for name, shape in expected.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.shape != shape:
                got = f"{array.dtype} {list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
                raise HeadError(f"head {self.spec.name}: expected {name} float32 {list(shape)}, got {got}")
            if not np.all(np.isfinite(array)):
                raise HeadError(f"head {self.spec.name}: expected finite {name}, got NaN or infinity")
        if np.any(self.scale <= 0):
            raise HeadError(f"head {self.spec.name}: expected a positive scale, got {float(self.scale.min())}")
        actual = weights_sha256(self.arrays)
        if actual != self.spec.sha256["weights"]:
            raise HeadError(
                f"head {self.spec.name}: expected weights sha256 {self.spec.sha256['weights']}, got {actual}"
            )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}

    @cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        # Fold (x - mean) / scale into one product, in float64 so folding adds no float32 error.
        weight = self.weight.astype(np.float64) / self.scale.astype(np.float64)
        bias = self.bias.astype(np.float64) - weight @ self.mean.astype(np.float64)
        return weight.T.astype(np.float32), bias.astype(np.float32)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """Logits float32 [N, C] for raw backbone embeddings float32 [N, D] (the artifact's `embedding`).

        Raises:
            HeadError: `embeddings` is not a [N, D] array of this head's dim.
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.spec.embedding_dim:
            raise HeadError(
                f"head {self.name}: expected embeddings [N, {self.spec.embedding_dim}], got {list(embeddings.shape)}"
            )
        weight_t, bias = self._affine
        return embeddings.astype(np.float32, copy=False) @ weight_t + bias

    def check_backbone(self, manifest: Manifest) -> None:
        """Refuse to run on any backbone but the one this head was fitted on.

        Raises:
            HeadError: the backbone's `model.onnx` hash or embedding size differs.
        """
        ref = self.spec.backbone
        if manifest.embedding_dim != self.spec.embedding_dim:
            raise HeadError(
                f"head {self.name}: expected backbone {ref.name} with embedding dim {self.spec.embedding_dim}, "
                f"got {manifest.name} with {manifest.embedding_dim}"
            )
        got = manifest.sha256.get("model")
        if got != ref.sha256:
            raise HeadError(
                f"head {self.name}: expected backbone {ref.name} sha256 {ref.sha256}, "
                f"got {manifest.name} version {manifest.version} sha256 {got}"
            )


def make_head(
    name: str,
    labels: Sequence[str],
    *,
    weight: np.ndarray,
    bias: np.ndarray,
    backbone: Manifest | BackboneRef,
    provenance: Provenance,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    parity: ParityFigures | None = None,
) -> Head:
    """Build and validate a head; `mean`/`scale` default to 0/1 (no standardisation).

    Raises:
        HeadError: shapes disagree with the labels or the backbone's embedding dim, bad name, etc.
    """
    ref = backbone if isinstance(backbone, BackboneRef) else BackboneRef.of(backbone)
    dim = ref.embedding_dim
    arrays = {
        "weight": np.asarray(weight, dtype=np.float32),
        "bias": np.asarray(bias, dtype=np.float32),
        "mean": np.zeros(dim, np.float32) if mean is None else np.asarray(mean, dtype=np.float32),
        "scale": np.ones(dim, np.float32) if scale is None else np.asarray(scale, dtype=np.float32),
    }
    try:
        spec = HeadSpec(name=name, labels=tuple(labels), embedding_dim=dim, backbone=ref,
                        provenance=provenance, sha256={"weights": weights_sha256(arrays)}, parity=parity)
    except (ValidationError, ValueError) as error:
        raise HeadError(f"head {name!r}: {error}") from None
    return Head(spec, **arrays)


def now() -> str:
    """UTC timestamp for `Provenance.created_at`."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_head(directory: str | Path, head: Head, *, overwrite: bool = False) -> Path:
    """Write `head` as a directory, atomically: a temp dir beside it, then a rename.

    An existing head is replaced (with `overwrite`) by moving it aside and renaming the new one in,
    so a reader sees the old head or the new one, never a mixture.

    Raises:
        HeadExists: `directory` exists and `overwrite` is False.
        HeadError: `directory` exists but is not a head directory.
    """
    out = Path(directory)
    _check_replaceable(out, overwrite)
    # Checked again before the swap: another writer may have finished meanwhile.
    with atomic_directory(out, before_swap=lambda: _check_replaceable(out, overwrite)) as tmp:
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **head.arrays)
        (tmp / WEIGHTS_FILE).write_bytes(buffer.getvalue())
        (tmp / HEAD_FILE).write_text(head.spec.to_json())
    return out


def _check_replaceable(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise HeadExists(f"expected a new head directory, got {out} which exists; pass overwrite to replace it")
    if not (out / HEAD_FILE).is_file():
        raise HeadError(f"expected a head directory (with {HEAD_FILE}) to overwrite, got {out} which is something else")


def read_head(directory: str | Path) -> Head:
    """Read and validate a head directory (spec, arrays and their hash).

    Raises:
        HeadError: missing files, invalid head.json, arrays that disagree with it.
    """
    directory = Path(directory)
    spec_path, weights_path = directory / HEAD_FILE, directory / WEIGHTS_FILE
    if not spec_path.is_file() or not weights_path.is_file():
        raise HeadError(f"expected a head directory with {HEAD_FILE} and {WEIGHTS_FILE}, got {directory}")
    spec = HeadSpec.from_json(spec_path.read_bytes(), source=spec_path)
    try:
        with np.load(weights_path, allow_pickle=False) as npz:
            missing = set(ARRAYS) - set(npz.files)
            if missing:
                raise HeadError(f"expected arrays {list(ARRAYS)} in {weights_path}, got {sorted(npz.files)}")
            arrays = {name: npz[name] for name in ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        if isinstance(error, HeadError):
            raise
        raise HeadError(f"expected numpy arrays in {weights_path}, got an unreadable file: {error}") from None
    return Head(spec, **arrays)
