"""The artifact manifest: the single source of truth about an exported model.

An artifact is a directory holding `model.onnx` and `manifest.json`. The service reads sizes, labels,
normalisation and tensor names from here and hard-codes none of them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from graft.artifact.documents import JsonDocument
from graft.artifact.errors import GraftError
from graft.artifact.preprocessing import PreprocessingSpec
from graft.artifact.text import TextSpec

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"

Task = Literal["classifier", "embedder"]
Modality = Literal["image", "text"]
Precision = Literal["fp32", "fp16", "int8"]


class ManifestError(GraftError, ValueError):
    """A manifest is missing, malformed, or disagrees with itself."""


@dataclass(frozen=True)
class TensorSpec:
    """One named model input or output; `None` in `shape` marks a dynamic axis."""

    name: str
    shape: tuple[int | None, ...]
    dtype: Literal["float32", "float16", "int64"] = "float32"


@dataclass(frozen=True)
class IOSpec:
    """The graph's inputs and outputs. Axis 0 of every tensor is the dynamic batch axis.

    An image model takes one float32 NCHW `input`; a text model (`layout` "tokens") takes int64
    token ids [N, L] as `input` and the attention `mask` [N, L] beside it.
    """

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    layout: Literal["NCHW", "tokens"] = "NCHW"
    mask: TensorSpec | None = None

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(f"expected an output named one of {[o.name for o in self.outputs]}, got {name!r}")


@dataclass(frozen=True)
class ParityFigures:
    """What the export gate measured: PyTorch vs ONNX Runtime on real images.

    `max_abs_diff` is ONNX Runtime vs PyTorch end to end. `max_scaled_diff[name]` is what the gate
    held to `<= tolerance`: over the images, the largest `max |onnx - reference|` of one image's
    output divided by `max(1, max |reference|)`, where the reference is PyTorch's output (for
    `logits`: PyTorch's head applied to the graph's own embedding, so each stage is checked at
    its own precision). A classifier also needed `top1_agreement >= min_top1_agreement`.
    """

    images: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    max_abs_diff: dict[str, float]
    tolerance: Annotated[float, Field(gt=0)]
    max_scaled_diff: dict[str, float] = Field(default_factory=dict)
    top1_agreement: float | None = Field(default=None, ge=0, le=1)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    sources: tuple[str, ...] = ()
    provider: str = "CPUExecutionProvider"
    accuracy: dict[str, float] | None = None
    """A head on an INT8 backbone: accuracy (0..1) of the run's PyTorch model ("fp32") and of the
    head on the INT8 embedding ("int8") on the run's labelled evaluation images; its drop is what is
    gated there (the INT8 gate's `max_accuracy_drop`), and `top1_agreement` is recorded with no
    `min_top1_agreement`."""
    median_cosine: float | None = None
    """A head on an INT8 backbone: median cosine of the INT8 and PyTorch embeddings."""


@dataclass(frozen=True)
class ImageSample:
    """A seeded sample of images, named by where it came from (never a local path of the exporter's)."""

    source: str
    images: Annotated[int, Field(ge=1)]
    seed: int


@dataclass(frozen=True)
class AccuracyGateFigures:
    """What the INT8 accuracy gate measured: the INT8 graph against the FP32 graph it was quantized
    from, both on ONNX Runtime's CPU provider, on held-out images (never the calibration images).

    `median_cosine`/`worst_cosine`: cosine similarity of each image's INT8 and FP32 `embedding`.
    `accuracy` ({"fp32": .., "int8": ..}, 0..1) only where the held-out images have labels the model
    predicts (a run's evaluation split); then the drop alone is gated, held to `max_accuracy_drop`,
    and the cosine and top-1 agreement are recorded with no threshold. Without labels the median
    cosine is held to `min_median_cosine` and a classifier's top-1 agreement to `min_top1_agreement`.
    A threshold of None: not gated.
    """

    held_out: ImageSample
    median_cosine: float
    min_median_cosine: float | None
    worst_cosine: float
    top1_agreement: float | None = Field(default=None, ge=0, le=1)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    accuracy: dict[str, float] | None = None
    max_accuracy_drop: float | None = None


@dataclass(frozen=True)
class Quantization:
    """How an INT8 artifact was made (ONNX Runtime static quantization) and what its gate measured."""

    calibration: ImageSample
    calibration_method: Literal["MinMax", "Entropy", "Percentile"]
    per_channel: bool
    float_nodes: tuple[str, ...]
    """Nodes left in float32 (no QuantizeLinear/DequantizeLinear around them)."""
    gate: AccuracyGateFigures
    format: Literal["QDQ"] = "QDQ"
    activations: Literal["uint8", "int8"] = "int8"
    weights: Literal["int8"] = "int8"


@dataclass(frozen=True)
class WeightsInfo:
    """Where the backbone's weights came from and whether they are trained at all."""

    source: str
    pretrained: bool
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest(JsonDocument):
    """Everything a consumer needs to run `model.onnx` correctly."""

    invalid = ManifestError
    document = "manifest"

    name: Annotated[str, Field(min_length=1)]
    version: Annotated[str, Field(min_length=1)]
    task: Task
    backbone: str
    created_at: str
    io: IOSpec
    embedding_dim: Annotated[int, Field(gt=0)]
    weights: WeightsInfo
    sha256: dict[str, str]
    parity: dict[str, ParityFigures]
    labels: tuple[str, ...] = ()
    producer: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    precision: Precision = "fp32"
    quantization: Quantization | None = None
    """INT8 artifacts: calibration, settings and the accuracy gate's figures."""
    modality: Modality = "image"
    preprocessing: PreprocessingSpec | None = None
    """Image models: how an image becomes the input."""
    text: TextSpec | None = None
    """Text models: how a string becomes the input (the tokenizer file ships in the artifact)."""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"expected manifest schema_version {SCHEMA_VERSION}, got {self.schema_version}"
            )
        if (self.precision == "int8") != (self.quantization is not None):
            raise ValueError(f"expected a quantization block exactly for precision int8, got precision {self.precision}")
        names = [o.name for o in self.io.outputs]
        embedding = self.io.output("embedding") if "embedding" in names else None
        if embedding is None:
            raise ValueError(f"expected an 'embedding' output, got outputs {names}")
        if embedding.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"expected embedding output of dim {self.embedding_dim}, got shape {embedding.shape}"
            )
        if self.task == "classifier":
            if "logits" not in names:
                raise ValueError(f"expected a classifier to have a 'logits' output, got {names}")
            if not self.labels:
                raise ValueError("expected a classifier to list its labels, got none")
            logits = self.io.output("logits")
            if logits.shape[-1] != len(self.labels):
                raise ValueError(
                    f"expected {logits.shape[-1]} labels for logits of shape {logits.shape}, "
                    f"got {len(self.labels)}"
                )
        elif "logits" in names or self.labels:
            raise ValueError("expected an embedder to have no 'logits' output and no labels")
        if self.modality == "text":
            self._check_text_io()
            return
        if self.preprocessing is None:
            raise ValueError("expected a preprocessing block for an image model, got none")
        if self.text is not None or self.io.layout != "NCHW" or self.io.mask:
            raise ValueError("expected an image model to have NCHW input and no text block")
        expected_input = (None, 3, *self.preprocessing.input_size)
        if tuple(self.io.input.shape) != expected_input:
            raise ValueError(
                f"expected input shape {expected_input} from preprocessing, got {self.io.input.shape}"
            )

    def _check_text_io(self) -> None:
        if self.text is None or self.preprocessing is not None:
            raise ValueError("expected a text model to have a text block and no image preprocessing")
        if self.io.layout != "tokens" or self.io.mask is None:
            raise ValueError(f"expected a text model's io to be 'tokens' with a mask, got {self.io.layout!r}")
        for spec in (self.io.input, self.io.mask):
            if spec.dtype != "int64" or tuple(spec.shape) != (None, None):
                raise ValueError(f"expected int64 [N, L] token inputs, got {spec.name} {spec.dtype} {spec.shape}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def image_spec(self) -> PreprocessingSpec:
        """The image preprocessing block; `ManifestError` for a text model."""
        if self.preprocessing is None:
            raise ManifestError(f"expected an image model, got the {self.modality} model {self.name!r}")
        return self.preprocessing

    @property
    def text_spec(self) -> TextSpec:
        """The text block; `ManifestError` for an image model."""
        if self.text is None:
            raise ManifestError(f"expected a text model, got the {self.modality} model {self.name!r}")
        return self.text


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Write `manifest.json` atomically (temp file, then rename)."""
    path = Path(directory) / MANIFEST_FILE
    # Not mkstemp: its 0600 would hide the manifest from a service running as another user.
    tmp = Path(directory) / f".manifest-{uuid.uuid4().hex}.json"
    try:
        with open(tmp, "x") as handle:
            handle.write(manifest.to_json())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate an artifact directory's manifest."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"expected an artifact directory with {MANIFEST_FILE}, got {directory}")
    return Manifest.from_json(path.read_bytes(), source=path)


def verify_model_hash(directory: str | Path, manifest: Manifest) -> None:
    """Check `model.onnx` against the manifest's hash; raise `ManifestError` on mismatch."""
    model = Path(directory) / MODEL_FILE
    if not model.is_file():
        raise ManifestError(f"expected {MODEL_FILE} beside the manifest in {directory}, got none")
    actual = sha256_file(model)
    expected = manifest.sha256.get("model")
    if actual != expected:
        raise ManifestError(f"expected {MODEL_FILE} sha256 {expected}, got {actual}: file changed")
