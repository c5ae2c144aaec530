"""INT8 artifacts: ONNX Runtime static quantization (QDQ), then an accuracy gate against FP32.

The FP32 graph (already through the PyTorch parity gate) is quantized with
`onnxruntime.quantization.quantize_static`: int8 weights and uint8 activations in QDQ format, so
the graph keeps float32 inputs and outputs and the service feeds it exactly what it feeds FP32.
The defaults (`Settings`) were chosen by measurement (benchmarks/RESULTS.md, "INT8").

The gate runs the INT8 and the FP32 graph on held-out images (never the calibration images) and
refuses the artifact, with one line naming what failed, past the `thresholds` that apply: where the
held-out images carry the model's own labels, accuracy may fall by at most MAX_ACCURACY_DROP;
without labels, the median cosine of the two embeddings must be >= MIN_MEDIAN_COSINE and a
classifier's top-1 agreement >= MIN_TOP1_AGREEMENT.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from graft.artifact.manifest import AccuracyGateFigures, ImageSample, Quantization
from graft.artifact.preprocessing import PreprocessingSpec, preprocess_batch
from graft.export import parity
from graft.export.errors import QuantizationError

log = logging.getLogger(__name__)

MIN_TOP1_AGREEMENT = 0.97
MIN_MEDIAN_COSINE = 0.99
MAX_ACCURACY_DROP = 0.005
"""0.5 points of accuracy (0..1) on a labelled held-out split."""
CHUNK = 4 * parity.BATCH_SIZE
"""Held-out images the gate preprocesses and runs at a time, so its memory does not grow with the
held-out size; a multiple of the batch size, so ONNX Runtime runs the batches one pass over all would."""


@dataclass(frozen=True)
class Settings:
    """Quantization settings. `float_convs`: how many of the graph's first Conv nodes stay float32
    (the stem and first block see raw pixels, where 8 bits lose the most). `activations`: uint8
    activations with int8 weights (U8S8) are what ONNX Runtime's x86 int8 kernels (AVX-512 VNNI,
    AVX2) run natively; int8 activations (S8S8) ran slower than FP32 on the EPYC we measured
    (benchmarks/RESULTS.md, "INT8") at the same accuracy."""

    calibration_method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
    per_channel: bool = True
    float_convs: int = 3
    activations: Literal["uint8", "int8"] = "uint8"


def preprocessed(images: Sequence[Image.Image], spec: PreprocessingSpec, size: int) -> Iterator[np.ndarray]:
    """`images` preprocessed `size` at a time, each chunk only when asked for (the last may be smaller)."""
    for start in range(0, len(images), size):
        yield preprocess_batch(images[start : start + size], spec)


class _Batches(CalibrationDataReader):
    """Calibration batches, each preprocessed when the quantizer asks for it (it reads them once)."""

    def __init__(self, input_name: str, images: Sequence[Image.Image], spec: PreprocessingSpec):
        self._batches = preprocessed(images, spec, parity.BATCH_SIZE)
        self._input_name = input_name

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def quantize(fp32: Path, out: Path, images: Sequence[Image.Image], spec: PreprocessingSpec,
             settings: Settings) -> tuple[str, ...]:
    """Write the INT8 QDQ graph of `fp32` to `out`, calibrated on `images`; return the nodes left float.

    `quant_pre_process` (shape inference, graph optimisation) runs first, as ONNX Runtime advises,
    into a file beside `out` that is removed after.
    """
    prepared = out.with_name(f"{out.stem}.prepared.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared))
        graph = onnx.load(str(prepared))
        convs = [node.name for node in graph.graph.node if node.op_type == "Conv"]
        keep = tuple(convs[: settings.float_convs])
        with _root_log_level(logging.WARNING):
            quantize_static(
                str(prepared), str(out), _Batches(graph.graph.input[0].name, images, spec),
                quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                activation_type=QuantType.QUInt8 if settings.activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, settings.calibration_method),
                nodes_to_exclude=list(keep),
            )
    finally:
        prepared.unlink(missing_ok=True)
    onnx.checker.check_model(str(out), full_check=True)
    return keep


@contextmanager
def _root_log_level(level: int) -> Iterator[None]:
    """NOTE: the quantizer logs a line per adjusted weight channel to the root logger (hundreds for
    Lite0); at INFO they would bury graft's own lines."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, level))
    try:
        yield
    finally:
        root.setLevel(before)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: cosine similarity of `a` and `b` [N, D]."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def gate(fp32: Path, int8: Path, images: Sequence[Image.Image], spec: PreprocessingSpec, held_out: ImageSample,
         targets: np.ndarray | None = None, chunk: int = CHUNK) -> AccuracyGateFigures:
    """Compare the INT8 graph with the FP32 graph on held-out `images`, `chunk` images at a time;
    `targets`: labels the model's logits index, where known.

    Raises:
        QuantizationError: a figure past its threshold, all failures in one line.
    """
    reference_session, actual_session = parity.onnx_session(fp32), parity.onnx_session(int8)
    # Only per-image figures outlive a chunk: its inputs and outputs go before the next is preprocessed.
    cosine_chunks, expected_chunks, predicted_chunks = [], [], []
    for inputs in preprocessed(images, spec, chunk):
        reference, actual = parity.onnx_outputs(reference_session, inputs), parity.onnx_outputs(actual_session, inputs)
        cosine_chunks.append(cosines(actual["embedding"], reference["embedding"]))
        if "logits" in reference:
            expected_chunks.append(reference["logits"].argmax(1))
            predicted_chunks.append(actual["logits"].argmax(1))
    cosine = np.concatenate(cosine_chunks)
    median = float(np.median(cosine))
    top1 = accuracy = None
    if expected_chunks:
        predicted, expected = np.concatenate(predicted_chunks), np.concatenate(expected_chunks)
        top1 = float(np.mean(predicted == expected))
        if targets is not None:
            accuracy = {"fp32": float(np.mean(expected == targets)), "int8": float(np.mean(predicted == targets))}
    failures = failures_of(median, top1, accuracy)
    if failures:
        raise QuantizationError(f"INT8 accuracy gate failed on {len(images)} held-out images ({held_out.source}): "
                                f"{'; '.join(failures)} (measured: {measured(median, top1, accuracy)})")
    applied = thresholds(labelled=accuracy is not None, classifier=top1 is not None)
    figures = AccuracyGateFigures(
        held_out=held_out, median_cosine=median, worst_cosine=float(cosine.min()), top1_agreement=top1,
        accuracy=accuracy, **asdict(applied),
    )
    log.info("INT8 gate on %d held-out images: median cosine %.4f (worst %.4f), top-1 agreement %s, accuracy %s",
             len(images), median, figures.worst_cosine, top1, accuracy)
    return figures


@dataclass(frozen=True)
class Thresholds:
    """What the gate holds each figure to; None: recorded, not gated."""

    min_median_cosine: float | None
    min_top1_agreement: float | None
    max_accuracy_drop: float | None


def thresholds(*, labelled: bool, classifier: bool) -> Thresholds:
    """The gate's rule. Where the held-out images have labels, the accuracy drop alone decides: it
    measures what a user of the model loses, while on a labelled split the FP32 model's own mistakes
    are mostly near-ties that quantization flips both ways (top-1 agreement then falls with no loss
    of accuracy), and its images may be far from photos (the embedding's cosine with them). Without
    labels the median embedding cosine and, for a classifier, the top-1 agreement with FP32 decide.
    """
    if labelled:
        return Thresholds(min_median_cosine=None, min_top1_agreement=None, max_accuracy_drop=MAX_ACCURACY_DROP)
    return Thresholds(min_median_cosine=MIN_MEDIAN_COSINE,
                      min_top1_agreement=MIN_TOP1_AGREEMENT if classifier else None, max_accuracy_drop=None)


def failures_of(median_cosine: float | None, top1: float | None, accuracy: dict[str, float] | None) -> list[str]:
    """Each figure past its threshold (`thresholds`), in words; None: not measured."""
    limits = thresholds(labelled=accuracy is not None, classifier=top1 is not None)
    failures = []
    if limits.min_median_cosine is not None and median_cosine is not None and median_cosine < limits.min_median_cosine:
        failures.append(f"median embedding cosine {median_cosine:.4f} < {limits.min_median_cosine}")
    if limits.min_top1_agreement is not None and top1 is not None and top1 < limits.min_top1_agreement:
        failures.append(f"top-1 agreement with FP32 {top1:.2%} < {limits.min_top1_agreement:.0%}")
    if limits.max_accuracy_drop is not None and accuracy is not None:
        drop = accuracy["fp32"] - accuracy["int8"]
        if drop > limits.max_accuracy_drop:
            failures.append(f"accuracy {accuracy['int8']:.2%} vs FP32 {accuracy['fp32']:.2%}, a drop of "
                            f"{drop * 100:.2f} points > {limits.max_accuracy_drop * 100:.1f}")
    return failures


def measured(median_cosine: float, top1: float | None, accuracy: dict[str, float] | None) -> str:
    """Every figure the gate measured, in words (a refusal names them all, not only the failures)."""
    figures = [f"median cosine {median_cosine:.4f}"]
    if top1 is not None:
        figures.append(f"top-1 agreement {top1:.2%}")
    if accuracy is not None:
        figures.append(f"accuracy {accuracy['int8']:.2%} vs FP32 {accuracy['fp32']:.2%}")
    return ", ".join(figures)


def describe(settings: Settings, calibration: ImageSample, float_nodes: tuple[str, ...],
             figures: AccuracyGateFigures) -> Quantization:
    """The manifest's `quantization` block."""
    return Quantization(calibration=calibration, calibration_method=settings.calibration_method,
                        per_channel=settings.per_channel, float_nodes=float_nodes, gate=figures,
                        activations=settings.activations)
