"""The parity gate: ONNX Runtime must reproduce PyTorch on real images before an artifact exists.

Both sides get the same float32 batches from `artifact.preprocessing`. An output passes when
`max |onnx - torch| <= tolerance * max(1, max |torch|)`: absolute for outputs of order 1 (ImageNet
logits, Lite0 embeddings), relative for large-magnitude ones (e.g. an untrained ResNet-50's logits,
where float32 rounding alone exceeds any fixed absolute bound). Classifiers must also agree on top-1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from artifact.manifest import ParityFigures
from export.errors import ParityError
from models.backbones import Backbone

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


# float32: kernels differ in summation order and ORT folds BatchNorm into Conv, which moves results
# by ~1e-5 relative (measured 5e-6..8e-6 on Lite0's logits); 1e-4 leaves 10x headroom and still
# catches a real fault (wrong weights, a missing layer, wrong normalisation), which moves them by O(1).
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


def onnx_outputs(path: Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs (CPU provider, default graph optimisations) by name, in batches."""
    session = ort.InferenceSession(str(path), providers=[PROVIDER])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    batches = [session.run(names, {input_name: inputs[s : s + BATCH_SIZE]}) for s in range(0, len(inputs), BATCH_SIZE)]
    return {name: np.concatenate([b[i] for b in batches]).astype(np.float32) for i, name in enumerate(names)}


def check(
    path: Path, inputs: np.ndarray, reference: dict[str, np.ndarray], gate: Gate, sources: tuple[str, ...]
) -> ParityFigures:
    """Run `path` on `inputs`, compare with `reference`, and return the figures.

    Raises:
        ParityError: an output differs beyond the gate, or top-1 agreement is below it; the
            message carries the measured numbers.
    """
    if len(inputs) < 2:
        raise ValueError(f"expected a parity batch of at least 2 images, got {len(inputs)}")
    actual = onnx_outputs(path, inputs)
    if set(actual) != set(reference):
        raise ParityError(f"expected ONNX outputs {sorted(reference)}, got {sorted(actual)}")
    diffs = {name: float(np.max(np.abs(actual[name] - ref))) for name, ref in reference.items()}
    scales = {name: max(1.0, float(np.max(np.abs(ref)))) for name, ref in reference.items()}
    top1 = None
    if "logits" in reference:
        top1 = float(np.mean(actual["logits"].argmax(1) == reference["logits"].argmax(1)))
    figures = ParityFigures(
        images=len(inputs),
        batch_size=min(BATCH_SIZE, len(inputs)),
        max_abs_diff=diffs,
        scale=scales,
        top1_agreement=top1,
        tolerance=gate.tolerance,
        min_top1_agreement=gate.min_top1 if top1 is not None else None,
        sources=sources,
        provider=PROVIDER,
    )
    failures = [
        f"{name} max abs diff {diffs[name]:.3g} > {gate.tolerance:g} x scale {scales[name]:.3g}"
        for name in reference
        if diffs[name] > gate.tolerance * scales[name]
    ]
    if top1 is not None and top1 < gate.min_top1:
        failures.append(f"top-1 agreement {top1:.2%} < {gate.min_top1:.0%}")
    if failures:
        raise ParityError(
            f"{gate.name} parity gate failed on {len(inputs)} images (PyTorch vs ONNX Runtime "
            f"{PROVIDER}): {'; '.join(failures)}"
        )
    log.info(
        "%s parity on %d images: max abs diff %s, top-1 agreement %s",
        gate.name, len(inputs), {k: f"{v:.2e}" for k, v in diffs.items()}, top1,
    )
    return figures
