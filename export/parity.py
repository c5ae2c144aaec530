"""The parity gate: ONNX Runtime must reproduce PyTorch on real images before an artifact exists.

Both sides get the same float32 batches from `artifact.preprocessing`. An output passes when, for
every image, `max |onnx - torch| <= tolerance * max(1, max |torch|)` over that image's output:
absolute for outputs of order 1 (ImageNet logits, Lite0 embeddings), relative for large-magnitude
ones (an untrained ResNet-50's logits reach ~100, a fine-tuned head's logits on out-of-domain photos
~1e4, where float32 rounding alone exceeds a fixed absolute bound). Scaling per image keeps one
large-magnitude image from loosening the bound for the others. Classifiers must also agree on top-1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from graft.artifact.manifest import ParityFigures
from graft.artifact.runtime import open_session
from graft.export.errors import ParityError
from graft.models.modules import Backbone

log = logging.getLogger(__name__)

PROVIDER = "CPUExecutionProvider"
BATCH_SIZE = 16
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")
"""scikit-image's bundled real photos: every export's gate sees at least these."""


@dataclass(frozen=True)
class Gate:
    """Pass criteria for one precision."""

    name: str
    tolerance: float
    min_top1: float


# float32: kernels differ in summation order and ORT folds BatchNorm into Conv. Measured scaled
# diffs: Lite0 1.6e-7 (logits) / 1.9e-6 (embedding), untrained ResNet-50 4.3e-7 / 5.2e-7, a
# fine-tuned Lite0 run 6.7e-7 / 3.1e-6. 1e-4 leaves >= 30x headroom and still catches a real fault
# (wrong weights, a missing layer, wrong normalisation), which moves outputs by O(1) of their scale.
FP32 = Gate("fp32", tolerance=1e-4, min_top1=1.0)
# float16 keeps ~3 significant digits per op and errors accumulate over ~50 layers: gate on the
# decision (top-1 agreement >= 99%) and bound the drift at 5% of the output's scale.
FP16 = Gate("fp16", tolerance=5e-2, min_top1=0.99)


def photos() -> list:
    """The `PHOTOS` as RGB PIL images (`motorcycle`: the left view of scikit-image's stereo pair)."""
    import skimage.data
    from PIL import Image

    arrays = {name: getattr(skimage.data, name)() for name in PHOTOS if name != "motorcycle"}
    arrays["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    return [Image.fromarray(arrays[name]) for name in PHOTOS]


def torch_outputs(backbone: Backbone, inputs: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """PyTorch's float32 outputs for `inputs` [N, 3, H, W], by output name, in batches.

    Runs channels-last (converting `backbone` in place, after its export): PyTorch's CPU
    depthwise convolutions are about twice as fast that way, and the values are the same model's.
    """
    backbone.eval().to(memory_format=torch.channels_last)
    results: dict[str, list[np.ndarray]] = {"logits": [], "embedding": []}
    with torch.inference_mode():
        for start in range(0, len(inputs), BATCH_SIZE):
            batch = torch.from_numpy(inputs[start : start + BATCH_SIZE]).contiguous(memory_format=torch.channels_last)
            logits, embedding = backbone(batch)
            results["logits"].append(logits.numpy())
            results["embedding"].append(embedding.numpy())
    return {name: np.concatenate(results[name]) for name in names}


def onnx_session(path: Path) -> ort.InferenceSession:
    """The gates' ONNX Runtime session: the CPU provider with the serving session settings."""
    return open_session(path, providers=[PROVIDER])


def onnx_outputs(model: Path | ort.InferenceSession, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of `model` (a graph's path, or its `onnx_session`) by name, in batches."""
    session = model if isinstance(model, ort.InferenceSession) else onnx_session(model)
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    batches = [session.run(names, {input_name: inputs[s : s + BATCH_SIZE]}) for s in range(0, len(inputs), BATCH_SIZE)]
    return {name: np.concatenate([b[i] for b in batches]).astype(np.float32) for i, name in enumerate(names)}


def scaled_diff(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per image [N]: max |actual - expected| / max(1, max |expected|) over that image's output."""
    axes = tuple(range(1, expected.ndim))
    scale = np.maximum(1.0, np.abs(expected).max(axis=axes))
    return np.abs(actual - expected).max(axis=axes) / scale


def check(
    path: Path,
    inputs: np.ndarray,
    reference: dict[str, np.ndarray],
    gate: Gate,
    sources: tuple[str, ...],
    head: nn.Linear | None = None,
) -> ParityFigures:
    """Run `path` on `inputs`, compare with `reference`, and return the figures.

    With `head` (classifiers), the gated logits check is stage by stage: the graph's `logits`
    against `head` applied to the graph's own `embedding`, while `embedding` is checked against
    PyTorch's. Together they pin the whole graph to the PyTorch model, each stage at float32
    precision. (End to end, a fine-tuned head with standardisation folded in has weights of ~1e4
    that amplify the trunk's 1e-5 float32 noise to ~1e-4 of the logits; that is conditioning, not
    an export fault.) `max_abs_diff` and top-1 agreement stay end to end, against PyTorch.

    Raises:
        ParityError: an output differs beyond the gate, or top-1 agreement is below it; the
            message carries the measured numbers.
    """
    if len(inputs) < 2:
        raise ValueError(f"expected a parity batch of at least 2 images, got {len(inputs)}")
    return compare(onnx_outputs(path, inputs), reference, gate, sources, head, batch_size=min(BATCH_SIZE, len(inputs)))


def compare(
    actual: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    gate: Gate,
    sources: tuple[str, ...],
    head: nn.Linear | None = None,
    *,
    batch_size: int,
    unit: str = "images",
) -> ParityFigures:
    """`check`'s verdict on outputs already computed: ONNX Runtime's `actual` against PyTorch's
    `reference` (e.g. a text graph's, which takes two inputs), over `unit`s in batches of `batch_size`.

    Raises:
        ParityError: as `check`.
    """
    inputs = next(iter(reference.values()))
    if set(actual) != set(reference):
        raise ParityError(f"expected ONNX outputs {sorted(reference)}, got {sorted(actual)}")
    diffs = {name: float(np.max(np.abs(actual[name] - ref))) for name, ref in reference.items()}
    gated = dict(reference)
    if head is not None:
        with torch.inference_mode():
            gated["logits"] = head(torch.from_numpy(actual["embedding"])).numpy()
    scaled = {name: float(np.max(scaled_diff(actual[name], ref))) for name, ref in gated.items()}
    top1 = None
    if "logits" in reference:
        top1 = float(np.mean(actual["logits"].argmax(1) == reference["logits"].argmax(1)))
    figures = ParityFigures(
        images=len(inputs),
        batch_size=batch_size,
        max_abs_diff=diffs,
        max_scaled_diff=scaled,
        top1_agreement=top1,
        tolerance=gate.tolerance,
        min_top1_agreement=gate.min_top1 if top1 is not None else None,
        sources=sources,
        provider=PROVIDER,
    )
    failures = [
        f"{name} max abs diff {diffs[name]:.3g}, {scaled[name]:.3g} of its image's scale > {gate.tolerance:g}"
        for name in reference
        if scaled[name] > gate.tolerance
    ]
    if top1 is not None and top1 < gate.min_top1:
        failures.append(f"top-1 agreement {top1:.2%} < {gate.min_top1:.0%}")
    if failures:
        raise ParityError(
            f"{gate.name} parity gate failed on {len(inputs)} {unit} (PyTorch vs ONNX Runtime "
            f"{PROVIDER}): {'; '.join(failures)}"
        )
    log.info(
        "%s parity on %d %s: max abs diff %s (scaled %s), top-1 agreement %s",
        gate.name, len(inputs), unit, {k: f"{v:.2e}" for k, v in diffs.items()},
        {k: f"{v:.2e}" for k, v in scaled.items()}, top1,
    )
    return figures
