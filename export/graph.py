"""Turn a `Backbone` into a checked ONNX graph: one input, `logits` and/or `embedding`, dynamic batch.

Uses the `torch.export`-based ONNX exporter (`dynamo=True`), PyTorch's maintained path: for
EfficientNet-Lite it yields a 94-node graph (BatchNorm folded, static "same" padding) where the
TorchScript exporter emits ~600 nodes of Shape/Gather/Pad arithmetic for the same model.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
from pathlib import Path

import onnx
import torch
from torch import nn

from artifact.manifest import IOSpec, TensorSpec
from models.backbones import Backbone

log = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "input"


class _EmbeddingOnly(nn.Module):
    """The headless graph: the backbone's pooled embedding, no head."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed(x)


def io_spec(backbone: Backbone, input_size: tuple[int, int], *, headless: bool) -> IOSpec:
    """The graph's tensors as the manifest records them (axis 0 dynamic)."""
    embedding = TensorSpec(name="embedding", shape=(None, backbone.embedding_dim))
    outputs = (embedding,) if headless else (TensorSpec(name="logits", shape=(None, backbone.num_classes)), embedding)
    return IOSpec(input=TensorSpec(name=INPUT_NAME, shape=(None, 3, *input_size)), outputs=outputs)


def export_onnx(backbone: Backbone, path: Path, io: IOSpec) -> None:
    """Export `backbone` (eval mode) to `path` as described by `io`, then run the full checker.

    Raises:
        onnx.checker.ValidationError: the written graph is not valid ONNX.
    """
    module = _EmbeddingOnly(backbone) if len(io.outputs) == 1 else backbone
    module.eval()
    example = torch.zeros(2, *io.input.shape[1:])  # batch 2: a batch of 1 would be specialised
    batch = torch.export.Dim("batch", min=1)
    # The exporter prints progress to stdout and its graph passes log every rewrite at INFO:
    # keep both out of the user's terminal unless debugging.
    progress = _io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(progress), _quiet("onnx_ir", "onnxscript"):
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[io.input.name],
            output_names=[o.name for o in io.outputs],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    log.debug("torch.onnx.export: %s", progress.getvalue().strip())
    # A path (not a loaded proto) lets the checker handle models beyond protobuf's 2 GB.
    onnx.checker.check_model(str(path), full_check=True)
    log.info("exported %s to %s (opset %d, %.1f MB)", backbone.name, path, OPSET, path.stat().st_size / 1e6)


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def convert_fp16(source: Path, target: Path) -> None:
    """Write a float16 copy of the ONNX model at `source`, keeping float32 inputs and outputs.

    NOTE: `keep_io_types=True` puts a Cast at the graph's edges, so the service feeds the same
    float32 array whatever the precision. The converter appends those Casts after the nodes that
    consume them (onnxconverter-common#208), which ONNX Runtime tolerates but the checker rejects,
    so the graph is topologically sorted before saving.
    """
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
    model.graph.sort()
    onnx.save(onnx_ir.to_proto(model), str(target))
    onnx.checker.check_model(str(target), full_check=True)
