#!/usr/bin/env bash
# graft's GPU run: install the carried wheels, check the driver and providers, export the artifacts,
# measure the service and the models on the GPU, run the gpu-marked tests; one report in --out.
#   benchmarks/gpu/run.sh --receive           # a command that only carries a piece (.gpu-bundle/PLAN.md)
#   benchmarks/gpu/run.sh --out DIR           # everything, in at most 8 minutes
#   benchmarks/gpu/run.sh --dry-run --out DIR # the same stages on the CPU, tiny sizes
# PYTHON picks the interpreter (default: python3, the one that has torch on a GPU host).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/run.py" "$@"
