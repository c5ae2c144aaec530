"""The INT8 accuracy gate on the tiny synthetic classifier, quantized for real (seconds, no PyTorch model):
chunk by chunk it measures what one pass over all its held-out images measures."""

from __future__ import annotations

import numpy as np
from PIL import Image

from graft.artifact.manifest import MODEL_FILE, ImageSample
from graft.artifact.preprocessing import preprocess_batch
from graft.export import parity, quantize
from tests.synthetic import COLOURS, PREPROCESSING, pictures, write_artifact


class ReadRecorder(list):
    """Images that note how many each read asked for."""

    def __init__(self, images):
        super().__init__(images)
        self.reads: list[int] = []

    def __getitem__(self, index):
        items = super().__getitem__(index)
        self.reads.append(len(items) if isinstance(index, slice) else 1)
        return items


def held_out_pictures(count: int) -> tuple[list[Image.Image], np.ndarray]:
    """`count` noisy pictures, round-robin over the tiny classifier's colours, and their label indexes."""
    rng = np.random.default_rng(7)
    colours = list(COLOURS.values())
    images = [Image.fromarray(np.clip(np.add(colours[i % len(colours)], rng.integers(-40, 41, (50, 70, 3))), 0, 255)
                              .astype(np.uint8)) for i in range(count)]
    return images, np.arange(count) % len(colours)


def test_the_gate_chunk_by_chunk_gives_the_figures_of_one_pass_over_all_images(tmp_path):
    write_artifact(tmp_path / "fp32")
    fp32, int8 = tmp_path / "fp32" / MODEL_FILE, tmp_path / "int8.onnx"
    quantize.quantize(fp32, int8, list(pictures().values()), PREPROCESSING, quantize.Settings())
    images, targets = held_out_pictures(11)
    sample = ImageSample("noisy colours", len(images), 7)

    chunked = ReadRecorder(images)
    by_three = quantize.gate(fp32, int8, chunked, PREPROCESSING, sample, targets, chunk=3)
    at_once = quantize.gate(fp32, int8, images, PREPROCESSING, sample, targets, chunk=len(images) + 1)

    assert chunked.reads == [3, 3, 3, 2]
    assert by_three == at_once
    inputs = preprocess_batch(images, PREPROCESSING)
    reference, actual = parity.onnx_outputs(fp32, inputs), parity.onnx_outputs(int8, inputs)
    cosine = quantize.cosines(actual["embedding"], reference["embedding"])
    expected, predicted = reference["logits"].argmax(1), actual["logits"].argmax(1)
    assert (by_three.median_cosine, by_three.worst_cosine) == (float(np.median(cosine)), float(cosine.min()))
    assert by_three.top1_agreement == float(np.mean(predicted == expected))
    assert by_three.accuracy == {"fp32": float(np.mean(expected == targets)), "int8": float(np.mean(predicted == targets))}
