#!/usr/bin/env bash
# Runs inside the image's build as root, after the Python packages (the bentofiles'
# `docker.setup_script`).
set -euo pipefail

# BentoML creates these under BENTOML_HOME at every start; made here, a read-only root filesystem
# works (the container writes only to /tmp, the heads volume and the TensorRT cache).
mkdir -p "$BENTOML_HOME"/bentos "$BENTOML_HOME"/models "$BENTOML_HOME"/envs "$BENTOML_HOME"/tmp
chown -R bentoml:bentoml "$BENTOML_HOME"

# GPU image: TensorRT 10 (~1.5 GB; ORT's TensorRT provider links libnvinfer.so.10). PyPI holds only
# stub sdists that fetch the wheel from NVIDIA's index at install time, so it is installed where
# that index is reachable; elsewhere the image keeps the CUDA provider and the build log says so.
if uv pip show -q onnxruntime-gpu 2>/dev/null; then
    if uv pip install "tensorrt-cu13-libs>=10.13,<11"; then
        echo "graft: TensorRT installed"
    else
        echo "graft: TensorRT NOT installed (NVIDIA's index unreachable from this build): CUDA provider only"
    fi
fi
