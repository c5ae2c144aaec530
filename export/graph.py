"""Turn a `Backbone` into a checked ONNX file: one input, `logits` and/or `embedding`, dynamic batch.

The graph itself comes from `models.onnx_graph`, the exporter training also uses for CPU evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from graft.artifact.manifest import IOSpec, TensorSpec
from graft.models.modules import Backbone
from graft.models.onnx_graph import INPUT_NAME, OPSET, to_onnx

__all__ = ["OPSET", "convert_fp16", "export_onnx", "io_spec"]

log = logging.getLogger(__name__)


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
    height, width = io.input.shape[2:]
    if height is None or width is None:
        raise ValueError(f"expected an image input of fixed height and width, got shape {io.input.shape}")
    program = to_onnx(backbone, (height, width), [o.name for o in io.outputs])
    program.save(str(path), external_data=False)
    # A path (not a loaded proto) lets the checker handle models beyond protobuf's 2 GB.
    onnx.checker.check_model(str(path), full_check=True)
    log.info("exported %s to %s (opset %d, %.1f MB)", backbone.name, path, OPSET, path.stat().st_size / 1e6)


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
