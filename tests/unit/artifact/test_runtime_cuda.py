"""The CUDA path where an NVIDIA GPU is (marked `gpu`, skipped elsewhere; benchmarks/gpu/run.sh runs
these on a lent GPU): the service's provider order lands on the GPU, and CUDA agrees with the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from graft.artifact.image import load_image
from graft.artifact.manifest import read_manifest
from graft.artifact.preprocessing import preprocess
from graft.artifact.runtime import Runner, gpu_present

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU")]


@pytest.fixture(scope="module")
def random_lite0(tmp_path_factory):
    """Lite0 with random weights: a GPU host need not have the pretrained weights' package."""
    from graft.export import export_backbone

    out = tmp_path_factory.mktemp("cuda") / "lite0"
    export_backbone("tf_efficientnet_lite0", out, weights="none")
    return out


def _runner(artifact, providers, tmp_path) -> Runner:
    return Runner(artifact, read_manifest(artifact), buckets=(1, 2, 4, 8), providers=providers, intra_op_threads=0,
                  trt_cache_dir=tmp_path / "trt")


def test_the_services_provider_order_runs_on_the_gpu(random_lite0, tmp_path):
    from graft.service.config import ServeConfig

    assert _runner(random_lite0, ServeConfig().providers, tmp_path).provider in (
        "TensorrtExecutionProvider", "CUDAExecutionProvider")


def test_cuda_agrees_with_the_cpu_on_real_photos(random_lite0, photo_jpegs, tmp_path):
    spec = read_manifest(random_lite0).preprocessing
    batch = np.stack([preprocess(load_image(path, min_side=spec.resize_size), spec) for path in photo_jpegs.values()])
    cuda = _runner(random_lite0, ("CUDAExecutionProvider",), tmp_path)
    assert cuda.provider == "CUDAExecutionProvider"
    on_gpu, on_cpu = cuda.infer(batch), _runner(random_lite0, ("CPUExecutionProvider",), tmp_path).infer(batch)
    for name, expected in on_cpu.items():
        # cuDNN may use TF32 for float32 convolutions: about three significant digits.
        assert np.abs(on_gpu[name] - expected).max() / np.abs(expected).max() < 1e-2, name
