"""A tiny synthetic artifact for the service's tests: what an exported backbone looks like to
`graft.service`, without torch and in a few KB.

The graph is global average pooling and two small MatMuls, built with `onnx.helper` when a test asks
for it (nothing binary is committed). Its labels are colours and its weights make a mostly-red
picture `red`, so tests can still tell images apart and check each answer lands on its own image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from graft.artifact.manifest import (
    MODEL_FILE,
    IOSpec,
    Manifest,
    TensorSpec,
    WeightsInfo,
    sha256_file,
    write_manifest,
)
from graft.artifact.preprocessing import PreprocessingSpec

NAME = "tiny"
EMBEDDER = f"{NAME}-embedder"
LABELS = ("red", "green", "blue", "dark", "light")
EMBEDDING_DIM = 16
PREPROCESSING = PreprocessingSpec(input_size=(24, 24), resize_size=32)
OPSET = 18
IR_VERSION = 10

# Embedding: the three pooled (normalised) channels, then fixed random mixtures of them, so raw
# vectors are far from unit norm and normalising them is visible.
EMBED_WEIGHT = np.hstack([np.eye(3), np.random.default_rng(0).normal(0, 0.5, (3, EMBEDDING_DIM - 3))]).astype(np.float32)
# Logits read the first three embedding columns: one per colour, then overall darkness and lightness.
LOGITS_WEIGHT = np.zeros((EMBEDDING_DIM, len(LABELS)), np.float32)
LOGITS_WEIGHT[:3] = [[1, 0, 0, -1, 1], [0, 1, 0, -1, 1], [0, 0, 1, -1, 1]]

COLOURS = {"red": (230, 30, 30), "green": (30, 230, 30), "blue": (30, 30, 230), "dark": (20, 20, 20),
           "light": (235, 235, 235)}


def pictures() -> dict[str, Image.Image]:
    """One noisy 80x60 RGB picture per label, named by the label the tiny classifier gives it."""
    images = {}
    for seed, (name, colour) in enumerate(COLOURS.items()):
        noise = np.random.default_rng(seed).integers(-25, 26, (60, 80, 3))
        images[name] = Image.fromarray(np.clip(np.add(colour, noise), 0, 255).astype(np.uint8))
    return images


def _graph(headless: bool) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    size = PREPROCESSING.input_size
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled_map"]),
        helper.make_node("Flatten", ["pooled_map"], ["pooled"], axis=1),
        helper.make_node("MatMul", ["pooled", "embed_weight"], ["embedding"]),
    ]
    weights = [numpy_helper.from_array(EMBED_WEIGHT, "embed_weight")]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING_DIM])]
    if not headless:
        nodes.append(helper.make_node("MatMul", ["embedding", "logits_weight"], ["logits"]))
        weights.append(numpy_helper.from_array(LOGITS_WEIGHT, "logits_weight"))
        outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(LABELS)]))
    graph = helper.make_graph(
        nodes, NAME, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, *size])], outputs, weights,
    )
    # An IR version ONNX Runtime reads: onnx stamps its own newest one by default.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="tests.synthetic")
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def write_artifact(directory: str | Path, *, headless: bool = False) -> Manifest:
    """Write the tiny classifier (or, `headless`, its embedder) as an artifact directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(_graph(headless))
    model_sha = sha256_file(directory / MODEL_FILE)
    embedding = TensorSpec(name="embedding", shape=(None, EMBEDDING_DIM))
    outputs = (embedding,) if headless else (TensorSpec(name="logits", shape=(None, len(LABELS))), embedding)
    manifest = Manifest(
        name=EMBEDDER if headless else NAME,
        version=model_sha[:12],
        task="embedder" if headless else "classifier",
        backbone=NAME,
        created_at="2025-01-01T00:00:00+00:00",
        preprocessing=PREPROCESSING,
        io=IOSpec(input=TensorSpec(name="input", shape=(None, 3, *PREPROCESSING.input_size)), outputs=outputs),
        embedding_dim=EMBEDDING_DIM,
        weights=WeightsInfo(source="tests/synthetic.py", pretrained=False),
        sha256={"model": model_sha},
        parity={},  # no export gate ran: the graph is its own reference
        labels=() if headless else LABELS,
    )
    write_manifest(directory, manifest)
    return manifest
