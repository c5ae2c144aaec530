"""Serving: BentoML services that run exported ONNX artifacts behind a batched HTTP API.

Torch-free by design: this package depends on onnxruntime, numpy, Pillow, pydantic, bentoml and
`artifact/` only. Importing `service` itself is cheap (no BentoML, no ONNX Runtime), so `graft serve`
can parse its arguments before any of that loads.
"""
