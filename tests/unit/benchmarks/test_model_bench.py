"""ONNX Runtime engines are named by the precision their artifact's manifest records (tiny synthetic artifacts)."""

from __future__ import annotations

from dataclasses import replace

from graft.artifact.manifest import AccuracyGateFigures, ImageSample, Quantization, write_manifest
from graft.benchmarks.model_bench import Timing, ceiling, ort_engines
from tests.synthetic import pictures, write_artifact


def write_int8_labelled(directory):
    """The tiny artifact with a manifest that calls it INT8 (the graph stays float: only the names are tested)."""
    manifest = write_artifact(directory)
    sample = ImageSample("tests/synthetic.py", 5, 0)
    gate = AccuracyGateFigures(held_out=sample, median_cosine=1.0, min_median_cosine=0.99, worst_cosine=1.0)
    write_manifest(directory, replace(manifest, precision="int8",
                                      quantization=Quantization(sample, "MinMax", True, (), gate)))


def test_engines_and_the_ceiling_are_named_by_the_manifests_precision(tmp_path):
    write_artifact(tmp_path / "fp32")
    write_int8_labelled(tmp_path / "int8")
    images = []
    for label, picture in pictures().items():
        images.append(tmp_path / f"{label}.png")
        picture.save(images[-1])
    timing = Timing(min_iters=1, max_iters=1, budget_s=0, warmup=0)
    for precision in ("fp32", "int8"):
        engines = ort_engines(tmp_path / precision, tmp_path / "cache")
        assert f"onnxruntime-cpu-{precision}" in engines and all(name.endswith(f"-{precision}") for name in engines)
        figures = ceiling(tmp_path / precision, images, (1,), tmp_path / "cache", timing)
        assert figures["engine"].endswith(f"-{precision}")
